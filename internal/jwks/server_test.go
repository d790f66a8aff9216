package jwks_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/jwks"
)

// writePair writes a fresh self-signed pair named cn and returns its DER.
func writePair(t *testing.T, dir, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{cn}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	os.WriteFile(filepath.Join(dir, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	return der
}

// A renewed pair is served from the next handshake on; a broken renewal
// keeps the previous pair; missing files stop start-up.
func TestCertificateReloads(t *testing.T) {
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if _, err := jwks.LoadCertificate(crt, key, 0, nil); err == nil {
		t.Fatal("missing files loaded")
	}
	first := writePair(t, dir, "first.example")
	c, err := jwks.LoadCertificate(crt, key, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	served := func() string {
		t.Helper()
		got, err := c.GetCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(got.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return leaf.Subject.CommonName
	}
	if served() != "first.example" || len(first) == 0 {
		t.Fatalf("serving %s", served())
	}
	writePair(t, dir, "second.example")
	if got := served(); got != "second.example" {
		t.Fatalf("after renewal serving %s", got)
	}
	os.WriteFile(key, []byte("half-written"), 0o600)
	if got := served(); got != "second.example" {
		t.Fatalf("after a broken renewal serving %s", got)
	}
}
