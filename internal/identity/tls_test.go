package identity_test

import (
	"crypto/tls"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/testing/devpki"
)

// serveTLS accepts on a loopback port with ServerTLS(src): each connection
// that completes its handshake gets "ok".
func serveTLS(t *testing.T, src identity.Source) string {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", identity.ServerTLS(src))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if c.(*tls.Conn).Handshake() == nil {
					c.Write([]byte("ok"))
				}
			}()
		}
	}()
	return lis.Addr().String()
}

// dial connects with cfg and reads the server's answer: a refused client
// certificate surfaces here (TLS 1.3 verifies it after the client's
// Finished). It reports whether the session was resumed.
func dial(addr string, cfg *tls.Config) (resumed bool, err error) {
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return false, err
	}
	defer c.Close()
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil {
		return c.ConnectionState().DidResume, err
	}
	if string(buf) != "ok" {
		return false, errors.New("unexpected answer")
	}
	return c.ConnectionState().DidResume, nil
}

// fileSource issues id from ca, writes the SVID files (ca's bundle beside
// them) and opens them as a file source, closed when the test ends.
func fileSource(t *testing.T, ca *devpki.CA, name, id string) (*identity.FileSource, devpki.Files) {
	t.Helper()
	svid, err := ca.Issue(id)
	if err != nil {
		t.Fatal(err)
	}
	files, err := ca.WriteFiles(t.TempDir(), name, svid)
	if err != nil {
		t.Fatal(err)
	}
	src, err := identity.NewFileSource(files.Cert, files.Key, files.Bundle, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src, files
}

// Distrusting a CA takes effect at once. The signer's bundle rotates from
// CA1 to CA2; a client holding a CA1 certificate and a session ticket from
// before the rotation is refused when it resumes, exactly as a full
// handshake is. Before, VerifyPeerCertificate (skipped by crypto/tls on
// resumption) let it back in. A client without a certificate still gets
// through to the interceptor.
func TestDistrustedCARefusedOnResumption(t *testing.T) {
	ca1, _ := devpki.NewCA("example.org")
	ca2, _ := devpki.NewCA("example.org")
	src, files := fileSource(t, ca1, "signer", "spiffe://example.org/signer")
	addr := serveTLS(t, src)
	clientSrc, clientFiles := fileSource(t, ca1, "core", "spiffe://example.org/core")
	client := func() *tls.Config {
		return identity.ClientTLS(clientSrc, tlsconfig.AuthorizeAny())
	}
	resuming := client()
	resuming.ClientSessionCache = tls.NewLRUClientSessionCache(8)

	if _, err := dial(addr, resuming); err != nil {
		t.Fatalf("before the rotation: %v", err)
	}
	if resumed, err := dial(addr, resuming); err != nil || !resumed {
		t.Fatalf("the client did not resume before the rotation (resumed=%v, %v): the test would prove nothing", resumed, err)
	}

	// The operator distrusts CA1: the bundle now holds CA2 only.
	if err := os.WriteFile(files.Bundle, ca2.BundlePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if changed, err := src.Reload(); err != nil || !changed {
		t.Fatalf("reload: %v %v", changed, err)
	}
	if _, err := dial(addr, client()); err == nil {
		t.Fatal("a full handshake with a CA1 certificate was accepted after the rotation")
	}
	if resumed, err := dial(addr, resuming); err == nil {
		t.Fatalf("a CA1 client was admitted after the rotation by resuming its session (resumed=%v)", resumed)
	}

	// No certificate: through the TLS layer (the interceptor denies it).
	anon := tlsconfig.TLSClientConfig(clientSrc, tlsconfig.AuthorizeAny())
	anon.MinVersion = tls.VersionTLS13
	if _, err := dial(addr, anon); err != nil {
		t.Fatalf("a certificate-less client was refused by TLS: %v", err)
	}
	// A CA2 client is admitted.
	newSVID, _ := ca2.Issue("spiffe://example.org/core")
	newFiles, _ := ca2.WriteFiles(t.TempDir(), "core", newSVID)
	newSrc, err := identity.NewFileSource(newFiles.Cert, newFiles.Key, clientFiles.Bundle, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer newSrc.Close()
	if _, err := dial(addr, identity.ClientTLS(newSrc, tlsconfig.AuthorizeAny())); err != nil {
		t.Fatalf("a CA2 client after the rotation: %v", err)
	}
}

// The client side holds the same rule (signerctl dials with ClientTLS):
// after its bundle drops the CA that issued the server's SVID, a resumed
// session is refused like a full handshake, and a server that was never
// trusted is refused outright.
func TestClientRefusesDistrustedServerOnResumption(t *testing.T) {
	ca1, _ := devpki.NewCA("example.org")
	ca2, _ := devpki.NewCA("example.org")
	serverSrc, _ := fileSource(t, ca1, "signer", "spiffe://example.org/signer")
	addr := serveTLS(t, serverSrc)
	clientSrc, clientFiles := fileSource(t, ca1, "operator", "spiffe://example.org/operator")
	cfg := identity.ClientTLS(clientSrc, tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://example.org/signer")))
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(8)
	if _, err := dial(addr, cfg); err != nil {
		t.Fatalf("before the rotation: %v", err)
	}
	if resumed, err := dial(addr, cfg); err != nil || !resumed {
		t.Fatalf("no resumption before the rotation (resumed=%v, %v): the test would prove nothing", resumed, err)
	}
	// The client's bundle now trusts CA2 only.
	if err := os.WriteFile(clientFiles.Bundle, ca2.BundlePEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if changed, err := clientSrc.Reload(); err != nil || !changed {
		t.Fatalf("reload: %v %v", changed, err)
	}
	if resumed, err := dial(addr, cfg); err == nil {
		t.Fatalf("a server from the distrusted CA was accepted by resuming (resumed=%v)", resumed)
	}
	// The wrong SPIFFE ID is refused too.
	wrong := identity.ClientTLS(serverSrc, tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://example.org/other")))
	if _, err := dial(addr, wrong); err == nil {
		t.Fatal("a server with another SPIFFE ID was accepted")
	}
}
