// Command svidprobe asks a SPIFFE Workload API for an X.509-SVID, again and
// again, and prints one line per attempt:
//
//	svid ok spiffe://example.org/ns/apps/sa/core at 1.2s in 3ms
//	svid refused PermissionDenied: no identity issued at 1.2s in 2ms
//	svid failed Unavailable: connection error: ... at 1.2s in 5s
//
// "at" is the time since the probe started, "in" how long the attempt took.
// The kind e2e runs it in two containers of one pod with the same
// ServiceAccount and the same agent socket mounted: the one named like the
// sidecar must get the SVID, the one named like the core must be refused
// by the agent itself (the SPIRE entry selects k8s:container-name), which
// shows that the core container would get no identity even if it reached
// the socket. It prints the SVID's SPIFFE ID, never its key, and keeps
// nothing.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "svidprobe:", err)
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("svidprobe", flag.ContinueOnError)
	addr := fs.String("addr", "unix:///spiffe-workload-api/spire-agent.sock", "the Workload API's address")
	every := fs.Duration("every", time.Second, "pause between attempts")
	timeout := fs.Duration("timeout", 10*time.Second, "how long one attempt may take")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("usage: svidprobe [--addr unix:///path] [--every D] [--timeout D]")
	}
	start := time.Now()
	for {
		t0 := time.Now()
		actx, cancel := context.WithTimeout(ctx, *timeout)
		svid, err := workloadapi.FetchX509SVID(actx, workloadapi.WithAddr(*addr))
		cancel()
		took := time.Since(t0).Round(time.Millisecond)
		at := t0.Sub(start).Round(100 * time.Millisecond)
		switch st, _ := status.FromError(err); {
		case ctx.Err() != nil:
			return nil
		case err == nil:
			fmt.Printf("svid ok %s at %s in %s\n", svid.ID, at, took)
		case st.Code() == codes.PermissionDenied:
			fmt.Printf("svid refused %s: %s at %s in %s\n", st.Code(), st.Message(), at, took)
		default:
			fmt.Printf("svid failed %s: %s at %s in %s\n", st.Code(), st.Message(), at, took)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*every):
		}
	}
}
