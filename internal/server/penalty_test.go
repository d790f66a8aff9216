package server_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/testing/devpki"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// A reconnecting flooder without a client certificate, as an attacker
// would write one: a new connection from its own address each time, one
// Sign on it. Each connection it gets through the handshake is denied and
// audited; once its source has spent its denied connections
// (SIGNER_DENIED_CONNECTION_RATE, bursts of 10×) the signer refuses its
// connections at accept, before the TLS handshake.

// attempt is one reconnect of the flooder from source: a TCP connection,
// a TLS handshake without a client certificate and, when the handshake
// completes, one Sign on it. It returns the handshake's error (nil when it
// completed) and the Sign's.
func attempt(t *testing.T, env *signertest.Env, source string) (handshake, call error) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	raw, err := d.Dial("tcp", env.Addr)
	if err != nil {
		// Reset before connect returned: refused at accept all the same.
		return err, nil
	}
	tc := tls.Client(raw, h2(env.ClientTLS(nil)))
	defer tc.Close()
	if err := tc.Handshake(); err != nil {
		return err, nil
	}
	// gRPC over the connection just made: the TLS is done, the client adds
	// HTTP/2 only.
	var used atomic.Bool
	cc, err := grpc.NewClient("passthrough:///signer", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(context.Context, string) (net.Conn, error) {
			if used.Swap(true) {
				return nil, errors.New("one connection only")
			}
			return tc, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = sign(cc, &signerv1.SignRequest{Scope: scope, Payload: []byte("flood")})
	return nil, err
}

// saidNothing reports whether a handshake failed because the signer closed
// the connection without a word (no ServerHello, no alert): it refused the
// connection at accept.
func saidNothing(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// flood reconnects from source until the signer has refused want
// connections before their handshake (or max attempts), checking that
// every connection that got through was denied. It returns the denials
// and the refusals.
func flood(t *testing.T, env *signertest.Env, source string, want, maxAttempts int) (denied, refused int) {
	t.Helper()
	for range maxAttempts {
		if refused >= want {
			break
		}
		hs, err := attempt(t, env, source)
		switch {
		case hs != nil && saidNothing(hs):
			refused++
		case hs != nil:
			t.Fatalf("the handshake failed other than by a refusal at accept: %v", hs)
		case status.Code(err) == codes.PermissionDenied:
			denied++
		default:
			t.Fatalf("a certificate-less call answered %v, want PermissionDenied", err)
		}
	}
	return denied, refused
}

// checkDenialsAudited checks that the entries after seq are exactly one
// denied admission entry and one denied middleware entry per denial, and
// the admitted calls' pairs.
func checkDenialsAudited(t *testing.T, env *signertest.Env, seq uint64, denied, granted int) {
	t.Helper()
	adm, mw := rpcEntries(t, env, seq)
	var admDenied, mwDenied, admGranted, mwGranted int
	for _, e := range adm {
		switch e.Reason {
		case auditlog.ReasonInsufficientRelation:
			admDenied++
		case auditlog.ReasonGranted:
			admGranted++
		}
	}
	for _, e := range mw {
		switch e.Reason {
		case auditlog.ReasonInsufficientRelation:
			mwDenied++
		case auditlog.ReasonGranted:
			mwGranted++
		}
	}
	if admDenied != denied || mwDenied != denied || len(adm) != denied+granted || len(mw) != denied+granted ||
		admGranted != granted || mwGranted != granted {
		t.Fatalf("%d denials and %d grants answered; entries: admission %d denied, %d granted (%d in all), middleware %d denied, %d granted (%d in all)",
			denied, granted, admDenied, admGranted, len(adm), mwDenied, mwGranted, len(mw))
	}
}

func TestReconnectingCertlessSourceRefusedBeforeHandshake(t *testing.T) {
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)),
		signertest.WithConfig(func(c *config.Signer) { c.DeniedConnectionRate = 1 }))
	coreID := env.Issue(t, signertest.CoreID)
	// An admitted core on another source (127.0.0.1), its connection open
	// through the flood.
	core := dialOnce(t, env, coreID)
	seq := env.LastSeq(t)
	if _, err := sign(core, &signerv1.SignRequest{Scope: scope, Payload: []byte("before")}); err != nil {
		t.Fatal(err)
	}

	// A budget of 1 a second with bursts of 10: past about ten denied
	// connections in a row the source is refused, however slow the host
	// (an attempt takes far less than the second a strike takes to refill).
	denied, refused := flood(t, env, "127.0.0.2", 5, 300)
	t.Logf("%d connections denied, %d refused before the handshake", denied, refused)
	if refused < 5 {
		t.Fatalf("%d connections denied and only %d refused at accept: a reconnecting certificate-less source keeps getting handshakes", denied, refused)
	}
	if denied == 0 || denied > 200 {
		t.Fatalf("%d connections denied before the source was refused", denied)
	}
	if n := refusedConns(t, env, "source_penalised"); int(n) != refused {
		t.Fatalf("connections_refused_total{reason=source_penalised} = %v, the flooder saw %d refusals", n, refused)
	}

	// The admitted core keeps working on its connection, and gets new
	// ones (a new handshake each) from its own source.
	if _, err := sign(core, &signerv1.SignRequest{Scope: scope, Payload: []byte("during")}); err != nil {
		t.Fatalf("the admitted core's connection under the flood: %v", err)
	}
	for i := range 3 {
		if _, err := sign(dialOnce(t, env, coreID), &signerv1.SignRequest{Scope: scope, Payload: []byte("new")}); err != nil {
			t.Fatalf("the admitted core's new connection %d while the flooder is refused: %v", i+1, err)
		}
	}
	// Every denied RPC has its entries (one admission, one middleware),
	// once; the refused connections have none.
	checkDenialsAudited(t, env, seq, denied, 5)
}

// A source holding an admitted connection is never refused for the strikes
// of another peer behind the same address: the admitted core there keeps
// getting new connections. The certificate-less peer's calls are still
// denied and audited, one connection at a time.
func TestAdmittedSourceNotRefusedForAnotherPeersStrikes(t *testing.T) {
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)),
		signertest.WithConfig(func(c *config.Signer) { c.DeniedConnectionRate = 1 }))
	coreID := env.Issue(t, signertest.CoreID)
	const shared = "127.0.0.3"
	core := dialFrom(t, env, coreID, shared)
	seq := env.LastSeq(t)
	if _, err := sign(core, &signerv1.SignRequest{Scope: scope, Payload: []byte("admitted")}); err != nil {
		t.Fatal(err)
	}
	// Three times the burst: a source without an admitted connection would
	// be refused long before (the test above).
	denied, refused := flood(t, env, shared, 1, 30)
	if refused != 0 || denied != 30 {
		t.Fatalf("%d denied, %d refused at accept: the source of an admitted connection was refused", denied, refused)
	}
	if _, err := sign(dialFrom(t, env, coreID, shared), &signerv1.SignRequest{Scope: scope, Payload: []byte("new")}); err != nil {
		t.Fatalf("the admitted core's new connection: %v", err)
	}
	checkDenialsAudited(t, env, seq, denied, 2)
}

// dialFrom is dialOnce from a given local address.
func dialFrom(t *testing.T, env *signertest.Env, svid *devpki.SVID, source string) *grpc.ClientConn {
	t.Helper()
	var dialed atomic.Bool
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
	cc, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(credentials.NewTLS(env.ClientTLS(svid))),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			if dialed.Swap(true) {
				return nil, errors.New("one connection only")
			}
			return d.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}
