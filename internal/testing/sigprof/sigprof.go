// Package sigprof lets the benchmark take CPU profiles of a process it runs
// (the signer, the floor signer) for just the rows it measures. It is linked
// only into binaries built with the benchprofile tag (tests/bench does that
// when BENCH_PROFILE_DIR is set); shipped binaries never carry it.
//
// With BENCH_PROFILE_DIR set in the process's environment, SIGUSR1 starts a
// CPU profile into that directory and SIGUSR2 stops it; the finished profile
// is renamed to cpu.pprof, so the benchmark waits for that name.
package sigprof

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"
)

// Start installs the handlers; without BENCH_PROFILE_DIR it does nothing.
func Start() {
	dir := os.Getenv("BENCH_PROFILE_DIR")
	if dir == "" {
		return
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGUSR1, syscall.SIGUSR2)
	go func() {
		var f *os.File
		for s := range sig {
			switch {
			case s == syscall.SIGUSR1 && f == nil:
				var err error
				if f, err = os.Create(filepath.Join(dir, "cpu.pprof.part")); err != nil {
					fmt.Fprintln(os.Stderr, "sigprof:", err)
					continue
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					fmt.Fprintln(os.Stderr, "sigprof:", err)
					f.Close()
					f = nil
				}
			case s == syscall.SIGUSR2 && f != nil:
				pprof.StopCPUProfile()
				f.Close()
				f = nil
				if err := os.Rename(filepath.Join(dir, "cpu.pprof.part"), filepath.Join(dir, "cpu.pprof")); err != nil {
					fmt.Fprintln(os.Stderr, "sigprof:", err)
				}
			}
		}
	}()
}
