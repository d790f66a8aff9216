package identity

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// FileSource reads an SVID (certificate chain and key, PEM) and the trust
// bundle (PEM) of the SVID's trust domain from files, and re-reads them when
// their content changes. A change that does not parse is logged and ignored:
// the last good identity keeps serving until it is fixed.
type FileSource struct {
	certPath, keyPath, bundlePath string
	log                           *slog.Logger

	mu      sync.RWMutex
	sum     [32]byte
	svid    *x509svid.SVID
	bundle  *x509bundle.Bundle
	updated chan struct{}

	stop chan struct{}
	once sync.Once
}

var _ Source = (*FileSource)(nil)

// NewFileSource loads the files and, if interval > 0, re-checks them every
// interval until Close. It fails if the files do not hold a valid SVID and a
// bundle for its trust domain.
func NewFileSource(certPath, keyPath, bundlePath string, interval time.Duration, log *slog.Logger) (*FileSource, error) {
	if log == nil {
		log = slog.Default()
	}
	s := &FileSource{certPath: certPath, keyPath: keyPath, bundlePath: bundlePath, log: log,
		updated: make(chan struct{}), stop: make(chan struct{})}
	if _, err := s.Reload(); err != nil {
		return nil, err
	}
	if interval > 0 {
		go s.watch(interval)
	}
	return s, nil
}

func (s *FileSource) watch(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			if changed, err := s.Reload(); err != nil {
				s.log.Warn("identity files changed but do not load; keeping the previous SVID", "err", err)
			} else if changed {
				s.log.Info("identity reloaded from files", "spiffe_id", s.ID().String())
			}
		}
	}
}

// Reload re-reads the files and swaps in the new identity if their content
// changed. It reports whether it swapped.
func (s *FileSource) Reload() (bool, error) {
	var raw [3][]byte
	for i, p := range []string{s.certPath, s.keyPath, s.bundlePath} {
		b, err := os.ReadFile(p)
		if err != nil {
			return false, fmt.Errorf("identity: %w", err) // an *fs.PathError: it names p
		}
		raw[i] = b
	}
	sum := sha256.Sum256(bytes.Join(raw[:], []byte{0}))
	s.mu.RLock()
	same := sum == s.sum && s.svid != nil
	s.mu.RUnlock()
	if same {
		return false, nil
	}
	svid, err := x509svid.Parse(raw[0], raw[1])
	if err != nil {
		return false, fmt.Errorf("identity: %s / %s: %w", s.certPath, s.keyPath, err)
	}
	bundle, err := x509bundle.Parse(svid.ID.TrustDomain(), raw[2])
	if err != nil {
		return false, fmt.Errorf("identity: bundle %s: %w", s.bundlePath, err)
	}
	if len(bundle.X509Authorities()) == 0 {
		return false, fmt.Errorf("identity: bundle %s holds no certificate", s.bundlePath)
	}
	s.mu.Lock()
	s.sum, s.svid, s.bundle = sum, svid, bundle
	close(s.updated)
	s.updated = make(chan struct{})
	s.mu.Unlock()
	return true, nil
}

// Updated returns a channel closed at the next successful reload.
func (s *FileSource) Updated() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.updated
}

// ID is the current SVID's SPIFFE ID.
func (s *FileSource) ID() spiffeid.ID {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.svid.ID
}

// GetX509SVID implements x509svid.Source.
func (s *FileSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source. Only the SVID's
// own trust domain is known; any other is refused.
func (s *FileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if td != s.bundle.TrustDomain() {
		return nil, fmt.Errorf("identity: no bundle for trust domain %q", td)
	}
	return s.bundle, nil
}

// Close stops watching the files.
func (s *FileSource) Close() error {
	s.once.Do(func() { close(s.stop) })
	return nil
}
