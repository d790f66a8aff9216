package server

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/config"
)

// preflight checks the files the signer writes or guards, before the
// identity wait and before the store is opened.
func preflight(cfg *config.Signer) error {
	var errs []error
	if cfg.CheckpointLog != "" {
		file, err := audit.CheckpointFile(cfg.CheckpointLog)
		if err == nil {
			err = checkAppendable(file)
		}
		if err != nil {
			errs = append(errs, config.Errorf(cfg, "CheckpointLog", "%v: the signer appends every checkpoint to it; give it a writable file on storage the database's writers cannot reach", err))
		}
	}
	if cfg.Provider == "local" && cfg.LocalKEK == "" && cfg.LocalKEKFile != "" {
		fi, err := os.Stat(cfg.LocalKEKFile)
		switch {
		case err != nil:
			errs = append(errs, config.Errorf(cfg, "LocalKEKFile", "%v", err))
		case fi.Mode().Perm()&0o004 != 0:
			// Whoever reads the KEK and the store has every key.
			errs = append(errs, config.Errorf(cfg, "LocalKEKFile", "%s is readable by every user (mode %04o): chmod 0400 (owner only; in Kubernetes the Secret volume's defaultMode 0400)",
				cfg.LocalKEKFile, fi.Mode().Perm()))
		}
	}
	if cfg.WitnessPolicyFile != "" {
		if _, err := os.ReadFile(cfg.WitnessPolicyFile); err != nil {
			errs = append(errs, config.Errorf(cfg, "WitnessPolicyFile", "%v", err))
		}
	}
	return errors.Join(errs...)
}

// checkAppendable: an existing file must open for appending; a missing one
// must be creatable in its directory.
func checkAppendable(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err == nil {
		return f.Close()
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if err := syscall.Access(dir, 0o2|0o1); err != nil { // W_OK|X_OK
		return fmt.Errorf("cannot create %s in %s: %w", filepath.Base(path), dir, err)
	}
	return nil
}

// checkIdentity holds the settings that need the SVID against it, once
// the identity is open and before the store is: an allow-listed SPIFFE ID
// whose trust domain the bundle lacks can never be verified, and the
// SVID must not double as the JWKS endpoint's certificate.
func (s *Signer) checkIdentity() error {
	cfg := &s.cfg
	var errs []error
	for _, list := range []struct {
		field string
		ids   []string
	}{{"AllowSPIFFEIDs", cfg.AllowSPIFFEIDs}, {"RotationAllowSPIFFEIDs", cfg.RotationAllowSPIFFEIDs}, {"AuditorAllowSPIFFEIDs", cfg.AuditorAllowSPIFFEIDs}} {
		for _, raw := range list.ids {
			id, err := spiffeid.FromString(raw)
			if err != nil {
				continue // Validate refused it already
			}
			if _, err := s.ident.GetX509BundleForTrustDomain(id.TrustDomain()); err == nil {
				continue
			}
			if cfg.WorkloadAPIAddr == "" {
				// The bundle file holds one trust domain's CAs and never
				// gains another: the ID can never be admitted.
				errs = append(errs, config.Errorf(cfg, list.field, "%s is in trust domain %q, which the trust bundle (%s) does not hold: no peer of it can ever be verified; fix the ID or the bundle",
					raw, id.TrustDomain().Name(), config.Name(cfg, "TrustBundleFile")))
				continue
			}
			// The Workload API adds federated bundles as SPIRE learns them:
			// the ID may become admissible without a restart.
			s.log.Warn("an allow-listed SPIFFE ID is in a trust domain the Workload API has no bundle for (yet): its peers fail the TLS handshake until SPIRE federates with that trust domain",
				"setting", config.Name(cfg, list.field), "spiffe_id", raw, "trust_domain", id.TrustDomain().Name())
		}
	}
	if s.jwksCert != nil {
		svid, err := s.ident.GetX509SVID()
		if err == nil && len(svid.Certificates) > 0 {
			if leaf := s.jwksCert.Leaf(); leaf != nil && (bytes.Equal(leaf.Raw, svid.Certificates[0].Raw) || hasSPIFFEID(leaf.URIs)) {
				errs = append(errs, config.Errorf(cfg, "JWKSCertFile", "the JWKS certificate is an X.509-SVID (a spiffe:// URI SAN): verifiers outside the mesh cannot check it, and its key is the signer's workload identity; use a certificate for the endpoint's DNS name that the verifiers trust"))
			}
		}
	}
	return errors.Join(errs...)
}

func hasSPIFFEID(uris []*url.URL) bool {
	for _, u := range uris {
		if u.Scheme == "spiffe" {
			return true
		}
	}
	return false
}
