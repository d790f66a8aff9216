// Command flooder is the benchmark's attacker: certificate-less callers
// that flood a signer with calls it must deny, each on its own connection
// with several calls in flight and patient deadlines, reconnecting (a new
// TLS handshake) whenever the signer refuses or closes a connection. It
// runs as its own process, from its own loopback source address, as a pod
// on the network would. It is a test program (tests/bench starts it for
// BenchmarkF_DenialFlood); it is never shipped. On SIGINT it prints what it
// saw on one line to stderr; with --stats it also keeps its counters in a
// file (rewritten every 100 ms) so that the bench can tell how hard it
// tried during a measured run, whatever CPU it was given.
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "flooder:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	addr := flag.String("addr", "", "signer address (host:port)")
	source := flag.String("source", "127.0.0.2", "local address to connect from")
	conns := flag.Int("conns", 64, "connections (callers) at once")
	inflight := flag.Int("inflight", 4, "calls in flight on each connection")
	deadline := flag.Duration("deadline", 10*time.Second, "each call's deadline")
	stats := flag.String("stats", "", "file to keep the counters in: dials calls denied unavailable other")
	flag.Parse()
	if *addr == "" {
		return fmt.Errorf("--addr is required")
	}
	local, err := net.ResolveTCPAddr("tcp", *source+":0")
	if err != nil {
		return err
	}
	dialer := &net.Dialer{LocalAddr: local}
	// No client certificate; the signer's identity is not checked (an
	// attacker does not care whom it floods).
	creds := credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}) //nolint:gosec // the attacker
	var denied, unavailable, other, connects, dials, calls atomic.Int64
	var wg sync.WaitGroup
	for range *conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				cc, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(creds),
					grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
						dials.Add(1)
						return dialer.DialContext(ctx, "tcp", a)
					}))
				if err != nil {
					return
				}
				connects.Add(1)
				rpc := signerv1.NewSignerServiceClient(cc)
				var callers sync.WaitGroup
				for range *inflight {
					callers.Add(1)
					go func() {
						defer callers.Done()
						for ctx.Err() == nil {
							cctx, cancel := context.WithTimeout(ctx, *deadline)
							_, err := rpc.Sign(cctx, &signerv1.SignRequest{Scope: "payments", Payload: []byte("flood")})
							cancel()
							calls.Add(1)
							switch status.Code(err) {
							case codes.PermissionDenied:
								denied.Add(1)
								continue
							case codes.Unavailable:
								unavailable.Add(1)
							default:
								other.Add(1)
							}
							return // refused or closed: reconnect, as a flood would
						}
					}()
				}
				callers.Wait()
				cc.Close()
			}
		}()
	}
	if *stats != "" {
		write := func() {
			line := fmt.Sprintf("%d %d %d %d %d\n", dials.Load(), calls.Load(), denied.Load(), unavailable.Load(), other.Load())
			tmp := *stats + ".tmp"
			if os.WriteFile(tmp, []byte(line), 0o644) == nil {
				os.Rename(tmp, *stats)
			}
		}
		go func() {
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				write()
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
			}
		}()
	}
	<-ctx.Done()
	wg.Wait()
	fmt.Fprintf(os.Stderr, "flooder: %d clients, %d dials, %d calls: %d denied, %d unavailable, %d other\n",
		connects.Load(), dials.Load(), calls.Load(), denied.Load(), unavailable.Load(), other.Load())
	return nil
}
