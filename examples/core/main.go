// Command core is a minimal core binary: it signs through its sidecar and
// verifies with cached public keys, importing only package client. It holds
// no private key; the no-material test checks that for everything it
// imports.
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "core:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("core", flag.ContinueOnError)
	target := fs.String("signer", envOr("CORE_SIGNER", "unix:///run/plexsphere/signer.sock"), "the sidecar: unix:///path or loopback host:port [CORE_SIGNER]")
	scope := fs.String("scope", envOr("CORE_SCOPE", "payments"), "signing scope [CORE_SCOPE]")
	message := fs.String("message", "hello from the core", "message to sign")
	every := fs.Duration("every", 0, "sign again at this interval until interrupted (0: once)")
	count := fs.Int("count", 0, "with --every, stop after this many signatures (0: until interrupted)")
	keepGoing := fs.Bool("keep-going", false, "with --every, report a failed sign and carry on instead of exiting")
	wait := fs.Duration("wait", 30*time.Second, "how long to retry while the sidecar or signer is not ready")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := client.Dial(ctx, *target)
	if err != nil {
		return err
	}
	defer c.Close()

	for n := 1; ; n++ {
		msg := []byte(fmt.Sprintf("%s #%d", *message, n))
		if err := signAndVerify(ctx, c, *scope, msg, *wait); err != nil {
			if !*keepGoing || *every == 0 || ctx.Err() != nil {
				return err
			}
			fmt.Printf("failed: %s: %v\n", status.Code(err), err)
		}
		if *every == 0 || n == *count {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*every):
		}
	}
}

func signAndVerify(ctx context.Context, c *client.Client, scope string, msg []byte, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		sig, err := c.Sign(cctx, scope, msg)
		if err == nil {
			err = c.Verify(cctx, scope, sig.KeyID, msg, sig.Bytes)
			cancel()
			if err != nil {
				return fmt.Errorf("verify: %w", err)
			}
			// request_id names the call in the signer's audit log (signerctl
			// audit prove <request_id>); the signature stays last.
			fmt.Printf("signed and verified: scope=%s key_id=%s request_id=%s message=%q signature=%s\n",
				scope, sig.KeyID, sig.RequestID, msg, base64.RawStdEncoding.EncodeToString(sig.Bytes))
			return nil
		}
		cancel()
		if !client.IsRetryable(err) || time.Now().After(deadline) {
			return fmt.Errorf("sign: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
