//go:build benchprofile

package main

import "github.com/plexsphere/signer/internal/testing/sigprof"

// Only in the benchmark's profiling builds (tests/bench, BENCH_PROFILE_DIR).
func init() { sigprof.Start() }
