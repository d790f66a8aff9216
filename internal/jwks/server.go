package jwks

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/plexsphere/signer/internal/ops"
)

// Certificate is the endpoint's server certificate, read from PEM files and
// read again when they change (cert-manager renews them in place). It is a
// certificate the endpoint's verifiers trust (a web PKI or cluster CA), not
// the signer's SVID: verifiers outside the mesh do not trust the SPIFFE
// bundle, and an SVID names no host for them to check.
type Certificate struct {
	certFile, keyFile string
	every             time.Duration
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   string
	checked time.Time
}

// LoadCertificate reads the pair now (an error stops start-up) and checks
// the files for changes at most every `every` afterwards.
func LoadCertificate(certFile, keyFile string, every time.Duration, log *slog.Logger) (*Certificate, error) {
	if log == nil {
		log = slog.Default()
	}
	c := &Certificate{certFile: certFile, keyFile: keyFile, every: every, log: log}
	stamp, err := c.stampOf()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	c.cert, c.stamp, c.checked = &cert, stamp, time.Now()
	return c, nil
}

// stampOf is a digest of both files' contents: a change is noticed
// whatever the file system's timestamp resolution, and a Secret volume's
// symlink swap is read as one change.
func (c *Certificate) stampOf() (string, error) {
	h := sha256.New()
	for _, f := range []string{c.certFile, c.keyFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	return string(h.Sum(nil)), nil
}

// GetCertificate is tls.Config.GetCertificate. A pair that fails to load
// (a half-written renewal) keeps the previous one in service.
func (c *Certificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.checked) < c.every {
		return c.cert, nil
	}
	c.checked = time.Now()
	stamp, err := c.stampOf()
	if err != nil || stamp == c.stamp {
		return c.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		c.log.Warn("jwks: the renewed certificate does not load; serving the previous one", "err", err)
		return c.cert, nil
	}
	c.cert, c.stamp = &cert, stamp
	c.log.Info("jwks: certificate reloaded")
	return c.cert, nil
}

// Server returns the HTTPS server for h: server TLS only (the keys are
// public: no client certificate is asked for), TLS 1.2 or later, HTTP/2 and
// HTTP/1.1, with the ops listeners' timeouts and header limit.
func Server(h http.Handler, cert *Certificate) *http.Server {
	t := ops.DefaultTimeouts
	return &http.Server{
		Handler: h,
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: cert.GetCertificate,
			NextProtos:     []string{"h2", "http/1.1"},
		},
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    16 << 10,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: 16},
	}
}

// Leaf is the current certificate's leaf.
func (c *Certificate) Leaf() *x509.Certificate {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert == nil {
		return nil
	}
	return c.cert.Leaf
}
