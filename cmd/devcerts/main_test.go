package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func read(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The KEK is never replaced; -keep reuses the CA; -renew reissues the
// SVIDs at half their lifetime, under the same bundle, until stopped.
func TestKeepAndRenew(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	if err := run(ctx, dir, "example.org", false, false, time.Hour); err != nil {
		t.Fatal(err)
	}
	kek, bundle := read(t, dir, "kek"), read(t, dir, "bundle.crt")
	if err := run(ctx, dir, "example.org", true, false, time.Hour); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(read(t, dir, "kek"), kek) || !bytes.Equal(read(t, dir, "bundle.crt"), bundle) {
		t.Fatal("-keep replaced the KEK or the CA")
	}
	if err := run(ctx, dir, "example.org", false, false, time.Hour); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(read(t, dir, "kek"), kek) || bytes.Equal(read(t, dir, "bundle.crt"), bundle) {
		t.Fatal("without -keep: the KEK was replaced, or the CA was not")
	}

	bundle = read(t, dir, "bundle.crt")
	first := read(t, dir, "operator.crt")
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(rctx, dir, "example.org", true, true, 4*time.Second) }()
	deadline := time.Now().Add(30 * time.Second)
	var renewed []byte
	for n := 0; n < 2; {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("the SVIDs were renewed %d times in 30s", n)
		}
		if cur := read(t, dir, "operator.crt"); !bytes.Equal(cur, first) && !bytes.Equal(cur, renewed) {
			renewed, n = cur, n+1
		}
		time.Sleep(50 * time.Millisecond) // a file polled for a change, not a guess at timing
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.Parse(read(t, dir, "operator.crt"), read(t, dir, "operator.key"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString("example.org"), bundle)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, b); err != nil {
		t.Fatalf("a renewed SVID does not chain to the bundle: %v", err)
	}
	if left := time.Until(svid.Certificates[0].NotAfter); left <= 0 || left > 4*time.Second {
		t.Fatalf("the renewed SVID expires in %s, want within its 4s lifetime", left)
	}
	if !bytes.Equal(read(t, dir, "bundle.crt"), bundle) {
		t.Fatal("-renew replaced the bundle")
	}
}
