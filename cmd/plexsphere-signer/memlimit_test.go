package main

import (
	"io"
	"log/slog"
	"math"
	"os"
	"runtime/debug"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

func TestMemoryLimitFollowsTheContainer(t *testing.T) {
	ratio := memoryLimitRatio
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))       // restore
	for _, v := range []string{"GOMEMLIMIT", "AUTOMEMLIMIT"} { // as in a pod that sets neither
		t.Setenv(v, "")
		os.Unsetenv(v)
	}

	debug.SetMemoryLimit(math.MaxInt64)
	setMemoryLimit(quiet, memlimit.Limit(256<<20))
	if got, want := debug.SetMemoryLimit(-1), int64(float64(256<<20)*ratio); got != want {
		t.Fatalf("memory limit %d under a 256 MiB container, want %d", got, want)
	}

	// An operator's GOMEMLIMIT wins.
	debug.SetMemoryLimit(math.MaxInt64)
	t.Setenv("GOMEMLIMIT", "1GiB")
	setMemoryLimit(quiet, memlimit.Limit(256<<20))
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Fatalf("GOMEMLIMIT set, yet the limit became %d", got)
	}
}
