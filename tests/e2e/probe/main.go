// Command probe opens TCP connections to every address a name resolves to,
// again and again, and prints one line per attempt:
//
//	connect ok 10.244.0.7:8443
//	connect failed 10.244.0.8:8443: dial tcp 10.244.0.8:8443: i/o timeout
//
// The kind e2e runs it in pods with and without the signer client label to
// show that the signer's NetworkPolicy is enforced, and, with --until-ok, as
// the init container of its operator Jobs: a new pod's address reaches the
// policy's allowed set a moment after the pod starts (kube-router syncs it),
// so the Job's real container starts only once a connection works. It holds
// no credentials and speaks no TLS: a completed TCP handshake is what it
// reports.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	every := fs.Duration("every", time.Second, "pause between rounds")
	timeout := fs.Duration("timeout", 2*time.Second, "connect timeout")
	untilOK := fs.Duration("until-ok", 0, "exit 0 at the first connection, 1 if none within this long (0: probe forever)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("usage: probe [--every D] [--timeout D] host:port")
	}
	host, port, err := net.SplitHostPort(fs.Arg(0))
	if err != nil {
		return err
	}
	start := time.Now()
	for {
		addrs, err := net.DefaultResolver.LookupHost(ctx, host)
		if err != nil {
			fmt.Printf("resolve failed %s: %v\n", host, err)
		}
		for _, a := range addrs {
			addr := net.JoinHostPort(a, port)
			d := net.Dialer{Timeout: *timeout}
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				fmt.Printf("connect failed %s: %v\n", addr, err)
				continue
			}
			c.Close()
			fmt.Printf("connect ok %s\n", addr)
			if *untilOK > 0 {
				fmt.Printf("reachable after %.1f s\n", time.Since(start).Seconds())
				return nil
			}
		}
		if *untilOK > 0 && time.Since(start) > *untilOK {
			fmt.Printf("not reachable within %s\n", *untilOK)
			os.Exit(1)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*every):
		}
	}
}
