// Command floorrelay is the benchmark's floor for the sidecar seat: a
// minimal L4 relay that accepts plaintext connections on a Unix socket (the
// core speaks h2c to it, as to the sidecar), opens one mTLS connection to
// the signer per accepted connection (the core's SVID, ALPN h2, the
// signer's SPIFFE ID verified with go-spiffe as the sidecar does) and copies
// bytes both ways. It inspects nothing, so it cannot refuse a method: it is
// what moving the bytes and the TLS costs, not a sidecar. A test program
// (tests/bench runs it beside plexsphere-sidecar); it is never shipped.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "floorrelay:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	listen := flag.String("listen", "", "Unix socket path to accept on")
	upstream := flag.String("upstream", "", "the signer's host:port")
	serverID := flag.String("server-id", "", "SPIFFE ID the signer must present")
	certFile := flag.String("cert", "", "PEM X.509-SVID presented to the signer")
	keyFile := flag.String("key", "", "PEM private key of -cert")
	bundleFile := flag.String("bundle", "", "PEM trust bundle of the signer's trust domain")
	flag.Parse()

	id, err := spiffeid.FromString(*serverID)
	if err != nil {
		return err
	}
	svid, err := x509svid.Load(*certFile, *keyFile)
	if err != nil {
		return err
	}
	bundle, err := x509bundle.Load(id.TrustDomain(), *bundleFile)
	if err != nil {
		return err
	}
	cfg := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(id))
	cfg.NextProtos = []string{"h2"} // grpc-go refuses TLS peers without ALPN

	lis, err := net.Listen("unix", *listen)
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		lis.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		down, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			relay(ctx, down, *upstream, cfg)
		}()
	}
}

// relay copies bytes between the accepted connection and a new TLS
// connection to the signer until either side closes.
func relay(ctx context.Context, down net.Conn, upstream string, cfg *tls.Config) {
	defer down.Close()
	d := tls.Dialer{Config: cfg}
	up, err := d.DialContext(ctx, "tcp", upstream)
	if err != nil {
		fmt.Fprintln(os.Stderr, "floorrelay: dial:", err)
		return
	}
	defer up.Close()
	stop := context.AfterFunc(ctx, func() { down.Close(); up.Close() })
	defer stop()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, down); done <- struct{}{} }()
	go func() { io.Copy(down, up); done <- struct{}{} }()
	<-done
}
