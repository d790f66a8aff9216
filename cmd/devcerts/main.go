// Command devcerts writes a throwaway development PKI for `make run` and
// local experiments: a trust-domain CA bundle, X.509-SVIDs for the signer,
// the core's sidecar and an operator, and a key-encryption key for the local
// provider. Never use its output outside a laptop.
//
// An existing KEK is never replaced (the store's keys are sealed with it);
// with -keep the CA in the directory is reused while it stays valid, so a
// kept store and its clients keep one trust bundle across runs. With -renew
// it stays running and reissues the SVIDs at half their lifetime (the
// binaries re-read their SVID files), until interrupted.
package main

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/plexsphere/signer/internal/testing/devpki"
)

// caLifetime: long enough that a kept dev setup does not need a new
// bundle for weeks, short enough to stay obviously throwaway.
const caLifetime = 30 * 24 * time.Hour

func main() {
	dir := flag.String("dir", "", "directory to write into (created)")
	td := flag.String("trust-domain", "example.org", "SPIFFE trust domain")
	keep := flag.Bool("keep", false, "reuse the CA already in -dir while it is valid (an existing KEK is always kept)")
	renew := flag.Bool("renew", false, "keep running and reissue the SVIDs at half their lifetime, until interrupted")
	svidTTL := flag.Duration("svid-ttl", time.Hour, "lifetime of each SVID")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "devcerts: -dir is required")
		os.Exit(2)
	}
	if *svidTTL < 2*time.Second {
		fmt.Fprintln(os.Stderr, "devcerts: -svid-ttl must be at least 2s")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *dir, *td, *keep, *renew, *svidTTL)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "devcerts:", err)
		os.Exit(1)
	}
}

// Identities issued, by file name prefix.
var identities = map[string]string{
	"signer":   "/ns/plexsphere/sa/plexsphere-signer",
	"core":     "/ns/plexsphere/sa/plexsphere-core",
	"operator": "/ns/plexsphere/sa/signer-operator",
}

func run(ctx context.Context, dir, td string, keep, renew bool, ttl time.Duration) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := writeKEK(dir); err != nil {
		return err
	}
	ca, err := loadOrCreateCA(dir, td, keep, ttl)
	if err != nil {
		return err
	}
	for {
		if err := issue(ca, dir, td, ttl); err != nil {
			return err
		}
		if !renew {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(ttl / 2):
		}
		if time.Until(ca.Cert.NotAfter) < ttl {
			// Not while running: a new bundle and new SVIDs cannot
			// be swapped in one step for every reader.
			return fmt.Errorf("the dev CA in %s expires at %s: restart without keeping it", dir, ca.Cert.NotAfter.UTC().Format(time.RFC3339))
		}
		fmt.Fprintf(os.Stderr, "devcerts: SVIDs in %s renewed (valid until %s)\n", dir, time.Now().Add(ttl).UTC().Format(time.RFC3339))
	}
}

// writeKEK writes a new KEK unless one is there: the keys of a kept store
// are sealed with it.
func writeKEK(dir string) error {
	path := filepath.Join(dir, "kek")
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		return err
	}
	return writeAtomic(path, []byte(base64.StdEncoding.EncodeToString(kek)+"\n"), 0o600)
}

// loadOrCreateCA reuses the CA in dir with keep while it outlives an
// SVID by a margin; otherwise it writes a new one.
func loadOrCreateCA(dir, td string, keep bool, ttl time.Duration) (*devpki.CA, error) {
	certPath, keyPath := filepath.Join(dir, "bundle.crt"), filepath.Join(dir, "ca.key")
	if keep {
		certPEM, cerr := os.ReadFile(certPath)
		keyPEM, kerr := os.ReadFile(keyPath)
		if cerr == nil && kerr == nil {
			ca, err := devpki.LoadCA(td, certPEM, keyPEM)
			if err == nil && time.Until(ca.Cert.NotAfter) > 4*ttl && hasTrustDomain(ca.Cert, td) {
				return ca, nil
			}
		}
	}
	now := time.Now()
	ca, err := devpki.NewCA(td, devpki.Validity(now.Add(-time.Hour), now.Add(caLifetime)))
	if err != nil {
		return nil, err
	}
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		return nil, err
	}
	if err := writeAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, err
	}
	return ca, writeAtomic(certPath, ca.BundlePEM(), 0o644)
}

func hasTrustDomain(cert *x509.Certificate, td string) bool {
	return len(cert.URIs) == 1 && cert.URIs[0].Host == td
}

// issue writes a fresh SVID per identity, each file replaced whole.
func issue(ca *devpki.CA, dir, td string, ttl time.Duration) error {
	now := time.Now()
	for name, path := range identities {
		svid, err := ca.Issue("spiffe://"+td+path, devpki.Validity(now.Add(-time.Minute), now.Add(ttl)))
		if err != nil {
			return err
		}
		if err := writeAtomic(filepath.Join(dir, name+".key"), svid.KeyPEM, 0o600); err != nil {
			return err
		}
		if err := writeAtomic(filepath.Join(dir, name+".crt"), svid.CertPEM, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// writeAtomic replaces path by a file holding data: a reader sees the old
// file or the new one, never a part.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
