package ctl

import (
	"context"
	"fmt"
	"io"
)

func runBench(_ context.Context, _ []string, _, stderr io.Writer) int {
	fmt.Fprintln(stderr, "signerctl bench: not built yet")
	return ExitUsage
}
