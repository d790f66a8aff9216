package identity_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/testing/devpki"
)

func TestFileSourceReloads(t *testing.T) {
	dir := t.TempDir()
	ca, err := devpki.NewCA("example.org")
	if err != nil {
		t.Fatal(err)
	}
	first, _ := ca.Issue("spiffe://example.org/a")
	files, err := ca.WriteFiles(dir, "svid", first)
	if err != nil {
		t.Fatal(err)
	}
	src, err := identity.NewFileSource(files.Cert, files.Key, files.Bundle, 10*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	got, _ := src.GetX509SVID()
	if got.ID.String() != "spiffe://example.org/a" {
		t.Fatalf("ID = %s", got.ID)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.org")); err == nil {
		t.Fatal("a bundle for another trust domain")
	}

	// A half-written update is ignored: the last good SVID keeps serving.
	updated := src.Updated()
	os.WriteFile(files.Cert, []byte("garbage"), 0o644)
	if changed, err := src.Reload(); err == nil || changed {
		t.Fatalf("broken files: changed=%v err=%v", changed, err)
	}
	if got, _ := src.GetX509SVID(); got.ID.String() != "spiffe://example.org/a" {
		t.Fatal("broken files replaced the SVID")
	}

	// A rotated SVID is picked up by the watcher.
	second, _ := ca.Issue("spiffe://example.org/b")
	if _, err := ca.WriteFiles(dir, "svid", second); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	select {
	case <-updated:
	case <-ctx.Done():
		t.Fatal("rotation not picked up")
	}
	if got, _ := src.GetX509SVID(); got.ID.String() != "spiffe://example.org/b" || got.Certificates[0].SerialNumber.Cmp(second.Cert.SerialNumber) != 0 {
		t.Fatalf("after rotation: %s", got.ID)
	}

	if _, err := identity.NewFileSource(files.Cert, files.Bundle, files.Bundle, 0, nil); err == nil {
		t.Fatal("a key file holding a certificate was accepted")
	}
}
