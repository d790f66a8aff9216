package peeridentity_test

import (
	"crypto/x509"
	"net/url"
	"strings"
	"testing"

	"github.com/plexsphere/signer/internal/signing/peeridentity"
	"github.com/plexsphere/signer/internal/testing/devpki"
)

// Whatever a certificate carries, the identity taken from it is one of its
// URI SANs with the spiffe scheme, or nothing.
func FuzzFirstSPIFFEID(f *testing.F) {
	ca, err := devpki.NewCA("example.org")
	if err != nil {
		f.Fatal(err)
	}
	svid, _ := ca.Issue("spiffe://example.org/ns/a/sa/b")
	f.Add(svid.Cert.Raw, "spiffe://example.org/x")
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00}, "https://example.org/spiffe://x")
	f.Add([]byte{}, "SPIFFE://example.org/upper")
	f.Fuzz(func(t *testing.T, der []byte, uri string) {
		var uris []*url.URL
		if cert, err := x509.ParseCertificate(der); err == nil {
			uris = append(uris, cert.URIs...)
		}
		if u, err := url.Parse(uri); err == nil {
			uris = append(uris, u)
		}
		uris = append(uris, nil)
		id := peeridentity.FirstSPIFFEID(uris)
		if id == "" {
			return
		}
		if !strings.HasPrefix(strings.ToLower(id), "spiffe://") {
			t.Fatalf("took %q as a SPIFFE ID", id)
		}
		for _, u := range uris {
			if u != nil && u.String() == id {
				return
			}
		}
		t.Fatalf("%q is none of the certificate's URIs", id)
	})
}
