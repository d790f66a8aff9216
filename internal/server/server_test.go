package server_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/keyprovider"
	"github.com/plexsphere/signer/internal/signerr"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/testing/devpki"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// A zone other than UTC proves the signer stores timestamps in UTC.
var admissionTime = time.Date(2026, 11, 28, 13, 0, 0, 0, time.FixedZone("CET", 3600))

const scope = signertest.Scope

func sign(cc *grpc.ClientConn, req *signerv1.SignRequest) (*signerv1.SignResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return signerv1.NewSignerServiceClient(cc).Sign(ctx, req)
}

func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code || (msg != "" && st.Message() != msg) {
		t.Fatalf("status = %v %q, want %v %q", st.Code(), st.Message(), code, msg)
	}
}

// rpcEntries splits the entries after seq into admission and middleware
// entries, checking the fields every entry shares.
func rpcEntries(t *testing.T, env *signertest.Env, seq uint64) (admission, middleware []auditlog.Entry) {
	t.Helper()
	for _, e := range env.AuditAfter(t, seq) {
		if e.CaveatContext == nil || len(e.CaveatContext) != 0 {
			t.Errorf("entry %d: CaveatContext = %#v, want empty non-nil", e.Seq, e.CaveatContext)
		}
		if !e.Timestamp.Equal(admissionTime) || e.Timestamp.Location() != time.UTC {
			t.Errorf("entry %d: Timestamp = %v, want %v in UTC", e.Seq, e.Timestamp, admissionTime.UTC())
		}
		switch {
		case e.Relation == auditlog.RelationConnect && strings.HasPrefix(e.Subject, "service:signer:peer="):
			admission = append(admission, e)
		case e.Subject == auditlog.SubjectSigner:
			middleware = append(middleware, e)
		default:
			t.Errorf("unexpected entry %+v", e)
		}
	}
	return admission, middleware
}

func TestAdmission(t *testing.T) {
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)))
	emptyList := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)),
		signertest.WithConfig(func(c *config.Signer) { c.AllowSPIFFEIDs = nil }))

	evilCA, err := devpki.NewCA("evil.org")
	if err != nil {
		t.Fatal(err)
	}
	mustIssue := func(ca *devpki.CA, id string, opts ...devpki.Option) *devpki.SVID {
		s, err := ca.Issue(id, opts...)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	intruder := "spiffe://example.org/ns/other/sa/intruder"

	for _, tc := range []struct {
		name      string
		env       *signertest.Env
		svid      *devpki.SVID
		call      func(cc *grpc.ClientConn) error
		code      codes.Code
		msg       string
		admission string // want admission subject ("" = no entry at all)
		reason    string // want the reason of both entries
		relation  string // want middleware relation
	}{
		{name: "allowed identity signs", env: env, svid: mustIssue(env.CA, signertest.CoreID),
			code: codes.OK, admission: "service:signer:peer=" + signertest.CoreID, reason: auditlog.ReasonGranted, relation: auditlog.RelationSign},
		{name: "identity not on the list", env: env, svid: mustIssue(env.CA, intruder),
			code: codes.PermissionDenied, msg: "signing: client identity denied", admission: "service:signer:peer=" + intruder, reason: auditlog.ReasonInsufficientRelation, relation: auditlog.RelationSign},
		{name: "no client certificate", env: env, svid: nil,
			code: codes.PermissionDenied, msg: "signing: client identity denied", admission: "service:signer:peer=", reason: auditlog.ReasonInsufficientRelation, relation: auditlog.RelationSign},
		{name: "certificate from another trust domain", env: env, svid: mustIssue(evilCA, "spiffe://evil.org/ns/plexsphere/sa/plexsphere-core"),
			code: codes.Unavailable},
		{name: "allowed ID signed by a foreign CA", env: env, svid: mustIssue(evilCA, signertest.CoreID),
			code: codes.Unavailable},
		{name: "expired certificate", env: env, svid: mustIssue(env.CA, signertest.CoreID, devpki.Validity(time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour))),
			code: codes.Unavailable},
		{name: "empty allow-list admits nobody", env: emptyList, svid: mustIssue(emptyList.CA, signertest.CoreID),
			code: codes.PermissionDenied, msg: "signing: client identity denied", admission: "service:signer:peer=" + signertest.CoreID, reason: auditlog.ReasonInsufficientRelation, relation: auditlog.RelationSign},
		{name: "core identity cannot rotate", env: env, svid: mustIssue(env.CA, signertest.CoreID),
			call: func(cc *grpc.ClientConn) error {
				_, err := signerv1.NewRotationServiceClient(cc).Open(context.Background(), &signerv1.OpenRequest{Scope: scope})
				return err
			},
			code: codes.PermissionDenied, msg: "signing: client identity denied", admission: "service:signer:peer=" + signertest.CoreID, reason: auditlog.ReasonInsufficientRelation, relation: auditlog.RelationRotate},
		{name: "operator cannot sign", env: env, svid: mustIssue(env.CA, signertest.OperatorID),
			code: codes.PermissionDenied, msg: "signing: client identity denied", admission: "service:signer:peer=" + signertest.OperatorID, reason: auditlog.ReasonInsufficientRelation, relation: auditlog.RelationSign},
		{name: "operator lists keys", env: env, svid: mustIssue(env.CA, signertest.OperatorID),
			call: func(cc *grpc.ClientConn) error {
				_, err := signerv1.NewRotationServiceClient(cc).ListKeys(context.Background(), &signerv1.ListKeysRequest{})
				return err
			},
			code: codes.OK, admission: "service:signer:peer=" + signertest.OperatorID, reason: auditlog.ReasonGranted, relation: auditlog.RelationRotate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seq := tc.env.LastSeq(t)
			cc := tc.env.Dial(t, tc.svid)
			var resp *signerv1.SignResponse
			var err error
			if tc.call != nil {
				err = tc.call(cc)
			} else {
				resp, err = sign(cc, &signerv1.SignRequest{Scope: scope, Payload: []byte("hello")})
			}
			wantStatus(t, err, tc.code, tc.msg)
			if tc.code != codes.OK && resp != nil {
				t.Fatal("a denied call returned a response")
			}
			adm, mw := rpcEntries(t, tc.env, seq)
			if tc.admission == "" {
				if len(adm)+len(mw) != 0 {
					t.Fatalf("a refused handshake left audit entries: %+v %+v", adm, mw)
				}
				return
			}
			if len(adm) != 1 || adm[0].Subject != tc.admission || adm[0].Reason != tc.reason {
				t.Fatalf("admission entries = %+v, want one %s/%s", adm, tc.admission, tc.reason)
			}
			// Every RPC, a denied one included, has exactly one middleware
			// entry, committed with its admission entry.
			if len(mw) != 1 || mw[0].Relation != tc.relation || mw[0].Reason != tc.reason || mw[0].RequestID != adm[0].RequestID ||
				mw[0].Code != tc.code.String() || mw[0].Seq != adm[0].Seq+1 {
				t.Fatalf("middleware entries = %+v, want one %s/%s after the admission entry", mw, tc.relation, tc.reason)
			}
			if tc.code != codes.OK {
				if mw[0].Object != "signing-key:payments:-" || mw[0].SignatureSHA256 != nil {
					t.Fatalf("a denied call resolved a key or signed: %+v", mw[0])
				}
				return
			}
			if resp != nil {
				pub := publicKey(t, cc, resp.KeyId)
				if !ed25519.Verify(pub, []byte("hello"), resp.Signature) {
					t.Fatal("signature does not verify with the published key")
				}
				if mw[0].Object != "signing-key:payments:"+resp.KeyId || len(mw[0].SignatureSHA256) != 32 {
					t.Fatalf("sign entry = %+v", mw[0])
				}
			}
		})
	}
}

func publicKey(t *testing.T, cc *grpc.ClientConn, keyID string) ed25519.PublicKey {
	t.Helper()
	resp, err := signerv1.NewSignerServiceClient(cc).PublicKey(context.Background(), &signerv1.PublicKeyRequest{Scope: scope, KeyId: &keyID})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Keys) != 1 || resp.Keys[0].State != signerv1.KeyState_KEY_STATE_ACTIVE || len(resp.Keys[0].PublicKey) != ed25519.PublicKeySize {
		t.Fatalf("PublicKey = %v", resp)
	}
	return resp.Keys[0].PublicKey
}

// The signer registers no reflection service, and an unadmitted peer
// learns nothing about which methods exist: every path, served or not, is
// PermissionDenied until admission, and audited. An admitted peer calling a
// method that does not exist gets Unimplemented, audited too.
func TestUnknownMethods(t *testing.T) {
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)))
	core := env.Dial(t, env.Issue(t, signertest.CoreID))
	// An anonymous peer gets one RPC per connection (its connection is
	// closed at its first denial): each case dials its own.
	var anon *grpc.ClientConn
	stream, err := reflectionpb.NewServerReflectionClient(core).ServerReflectionInfo(context.Background())
	if err == nil {
		// Send may already see the stream closed (io.EOF); Recv carries the status.
		stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
		_, err = stream.Recv()
	}
	wantStatus(t, err, codes.PermissionDenied, "signing: client identity denied")

	invoke := func(cc *grpc.ClientConn, method string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return cc.Invoke(ctx, method, &signerv1.SignRequest{Scope: scope, Payload: []byte("x")}, &signerv1.SignResponse{})
	}
	for _, tc := range []struct {
		name     string
		cc       *grpc.ClientConn
		method   string
		code     codes.Code
		relation string
		reason   string
	}{
		{"anonymous, served method", anon, signerv1.SignerService_Sign_FullMethodName, codes.PermissionDenied, auditlog.RelationSign, auditlog.ReasonInsufficientRelation},
		{"anonymous, unknown method of a served service", anon, "/plexsphere.signer.v1.SignerService/Export", codes.PermissionDenied, auditlog.RelationUnknown, auditlog.ReasonInsufficientRelation},
		{"anonymous, unknown service", anon, "/plexsphere.admin.v1.Debug/Dump", codes.PermissionDenied, auditlog.RelationUnknown, auditlog.ReasonInsufficientRelation},
		{"admitted, unknown method of its service", core, "/plexsphere.signer.v1.SignerService/Export", codes.Unimplemented, auditlog.RelationUnknown, auditlog.ReasonInsufficientRelation},
		{"admitted, unknown service", core, "/plexsphere.admin.v1.Debug/Dump", codes.PermissionDenied, auditlog.RelationUnknown, auditlog.ReasonInsufficientRelation},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc := tc.cc
			if cc == anon {
				cc = env.Dial(t, nil)
			}
			seq := env.LastSeq(t)
			err := invoke(cc, tc.method)
			if status.Code(err) != tc.code {
				t.Fatalf("%s: %v, want %v", tc.method, err, tc.code)
			}
			if tc.code == codes.PermissionDenied {
				wantStatus(t, err, codes.PermissionDenied, "signing: client identity denied")
			}
			adm, mw := rpcEntries(t, env, seq)
			if len(adm) != 1 || len(mw) != 1 || mw[0].Relation != tc.relation || mw[0].Reason != tc.reason ||
				mw[0].Method != tc.method || mw[0].Code != tc.code.String() || mw[0].RequestID != adm[0].RequestID {
				t.Fatalf("entries %+v %+v, want one admission and one %s/%s entry", adm, mw, tc.relation, tc.reason)
			}
		})
	}
}

// faults wraps a store and a provider with switchable failures.
type faults struct {
	store.Store
	mu        sync.Mutex
	activeErr error
	appendErr error
}

func (f *faults) set(active, appendErr error) {
	f.mu.Lock()
	f.activeErr, f.appendErr = active, appendErr
	f.mu.Unlock()
}

func (f *faults) ActiveKey(ctx context.Context, scope string) (store.Key, error) {
	f.mu.Lock()
	err := f.activeErr
	f.mu.Unlock()
	if err != nil {
		return store.Key{}, err
	}
	return f.Store.ActiveKey(ctx, scope)
}

func (f *faults) appendErrNow() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.appendErr
}

func (f *faults) AppendAudit(ctx context.Context, b *audit.Batch) error {
	if err := f.appendErrNow(); err != nil {
		return err
	}
	return f.Store.AppendAudit(ctx, b)
}

func (f *faults) AppendAuditLocked(ctx context.Context, after uint64, build func(audit.LockedHead) (*audit.Batch, error)) error {
	if err := f.appendErrNow(); err != nil {
		return err
	}
	return f.Store.AppendAuditLocked(ctx, after, build)
}

// flakyProvider's keys fail to sign while down is set, as an HSM does when
// its token goes away.
type flakyProvider struct {
	keyprovider.Provider
	down *atomic.Bool
}

func (p flakyProvider) Load(ctx context.Context, ref keyprovider.KeyRef, h []byte) (keyprovider.Key, error) {
	k, err := p.Provider.Load(ctx, ref, h)
	return flakyKey{k, p.down}, err
}

type flakyKey struct {
	keyprovider.Key
	down *atomic.Bool
}

func (k flakyKey) SignContext(ctx context.Context, m []byte) ([]byte, error) {
	if k.down.Load() {
		return nil, fmt.Errorf("pkcs11: C_Sign: CKR_DEVICE_REMOVED (pin 1234): %w", signerr.ErrProviderUnavailable)
	}
	return k.Key.SignContext(ctx, m)
}

// Every error class yields exactly one middleware entry, with the code and
// reason from the one table, and the caller never sees internal text.
func TestEveryErrorClassAuditedOnce(t *testing.T) {
	env := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)),
		signertest.WithConfig(func(c *config.Signer) {
			c.KeyCacheTTL = 0
			c.BootstrapScopes = []string{scope, "other"}
			c.MaxPayloadBytes = 1024
			c.PrePublish = 0
			c.VerifyOnly = 0
		}))
	f := &faults{Store: signertest.OpenBolt(t)}
	down := new(atomic.Bool)
	faulty := signertest.Start(t, signertest.WithClock(signertest.NewClock(admissionTime)), signertest.WithStore(f),
		signertest.WithProvider(flakyProvider{signertest.NewLocalProvider(t), down}),
		signertest.WithConfig(func(c *config.Signer) { c.KeyCacheTTL = 0 }))
	core := env.Dial(t, env.Issue(t, signertest.CoreID))
	op := signerv1.NewRotationServiceClient(env.Dial(t, env.Issue(t, signertest.OperatorID)))
	ctx := context.Background()

	active, err := signerv1.NewSignerServiceClient(core).PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: scope})
	if err != nil {
		t.Fatal(err)
	}
	firstKey := active.Keys[0].KeyId
	other, err := signerv1.NewSignerServiceClient(core).PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: "other"})
	if err != nil {
		t.Fatal(err)
	}
	otherKey := other.Keys[0].KeyId
	// Rotate once: firstKey becomes PREVIOUS, then open a PENDING key.
	opened, err := op.Open(ctx, &signerv1.OpenRequest{Scope: scope})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := op.Commit(ctx, &signerv1.CommitRequest{Scope: scope, KeyId: opened.Key.KeyId}); err != nil {
		t.Fatal(err)
	}
	pending, err := op.Open(ctx, &signerv1.OpenRequest{Scope: scope})
	if err != nil {
		t.Fatal(err)
	}
	ptr := func(s string) *string { return &s }

	for _, tc := range []struct {
		name   string
		req    *signerv1.SignRequest
		code   codes.Code
		reason string
		object string
	}{
		{"granted", &signerv1.SignRequest{Scope: scope, Payload: []byte("p")}, codes.OK, "granted", "signing-key:payments:" + opened.Key.KeyId},
		{"invalid scope", &signerv1.SignRequest{Scope: "bad:scope", Payload: []byte("p")}, codes.InvalidArgument, "insufficient_relation", "signing-key:-:-"},
		{"empty scope", &signerv1.SignRequest{Payload: []byte("p")}, codes.InvalidArgument, "insufficient_relation", "signing-key:-:-"},
		{"oversized payload", &signerv1.SignRequest{Scope: scope, Payload: make([]byte, 1025)}, codes.InvalidArgument, "insufficient_relation", "signing-key:payments:-"},
		{"malformed key id", &signerv1.SignRequest{Scope: scope, Payload: []byte("p"), KeyId: ptr("../etc")}, codes.InvalidArgument, "insufficient_relation", "signing-key:payments:-"},
		{"unknown key id", &signerv1.SignRequest{Scope: scope, Payload: []byte("p"), KeyId: ptr("nosuchkey")}, codes.NotFound, "insufficient_relation", "signing-key:payments:-"},
		{"scope without keys", &signerv1.SignRequest{Scope: "empty", Payload: []byte("p")}, codes.NotFound, "insufficient_relation", "signing-key:empty:-"},
		{"another scope's key", &signerv1.SignRequest{Scope: scope, Payload: []byte("p"), KeyId: &otherKey}, codes.PermissionDenied, "insufficient_relation", "signing-key:payments:" + otherKey},
		{"pending key", &signerv1.SignRequest{Scope: scope, Payload: []byte("p"), KeyId: &pending.Key.KeyId}, codes.FailedPrecondition, "caveat_violation", "signing-key:payments:" + pending.Key.KeyId},
		{"previous key", &signerv1.SignRequest{Scope: scope, Payload: []byte("p"), KeyId: &firstKey}, codes.FailedPrecondition, "caveat_violation", "signing-key:payments:" + firstKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seq := env.LastSeq(t)
			resp, err := sign(core, tc.req)
			wantStatus(t, err, tc.code, "")
			if tc.code != codes.OK && resp != nil {
				t.Fatal("error with a response")
			}
			adm, mw := rpcEntries(t, env, seq)
			if len(adm) != 1 || len(mw) != 1 {
				t.Fatalf("%d admission and %d middleware entries, want 1 and 1", len(adm), len(mw))
			}
			e := mw[0]
			if e.Relation != "sign" || e.Reason != tc.reason || e.Object != tc.object || e.Code != tc.code.String() || e.RequestID != adm[0].RequestID {
				t.Fatalf("entry = %+v, want reason %s object %s", e, tc.reason, tc.object)
			}
			if (e.SignatureSHA256 != nil) != (tc.code == codes.OK) {
				t.Fatalf("signature digest %q for code %v", e.SignatureSHA256, tc.code)
			}
		})
	}

	// Retire is refused for the ACTIVE key and audited as a rotate entry.
	t.Run("retire active key", func(t *testing.T) {
		seq := env.LastSeq(t)
		_, err := op.Retire(ctx, &signerv1.RetireRequest{Scope: scope, KeyId: opened.Key.KeyId})
		wantStatus(t, err, codes.FailedPrecondition, "signing: key is active")
		_, mw := rpcEntries(t, env, seq)
		if len(mw) != 1 || mw[0].Relation != "rotate" || mw[0].Reason != "caveat_violation" || mw[0].Object != "signing-key:payments:"+opened.Key.KeyId {
			t.Fatalf("entries = %+v", mw)
		}
	})

	fcore := faulty.Dial(t, faulty.Issue(t, signertest.CoreID))
	fkeys, err := signerv1.NewSignerServiceClient(fcore).PublicKey(ctx, &signerv1.PublicKeyRequest{Scope: scope})
	if err != nil {
		t.Fatal(err)
	}
	faultyKey := fkeys.Keys[0].KeyId
	for _, tc := range []struct {
		name     string
		active   error
		provider bool
		code     codes.Code
		msg      string
		reason   string
		wireTag  string
	}{
		{"invariant", signerr.ErrInvariant, false, codes.Internal, "signing: key store invariant violated", "insufficient_relation", "ERROR_REASON_INVARIANT"},
		{"unclassified", errors.New("pq: password authentication failed for user signer"), false, codes.Internal, "signing: internal error", "insufficient_relation", "ERROR_REASON_INTERNAL"},
		{"provider unavailable", nil, true, codes.Unavailable, "signing: key provider unavailable", "caveat_violation", "ERROR_REASON_PROVIDER_UNAVAILABLE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.set(tc.active, nil)
			down.Store(tc.provider)
			defer func() { f.set(nil, nil); down.Store(false) }()
			seq := faulty.LastSeq(t)
			_, err := sign(fcore, &signerv1.SignRequest{Scope: scope, Payload: []byte("p")})
			wantStatus(t, err, tc.code, tc.msg)
			if got := wireReason(err); got != tc.wireTag {
				t.Fatalf("ErrorInfo reason = %q, want %q", got, tc.wireTag)
			}
			_, mw := rpcEntries(t, faulty, seq)
			wantObject := "signing-key:payments:-"
			if tc.provider {
				wantObject = "signing-key:payments:" + faultyKey
			}
			if len(mw) != 1 || mw[0].Reason != tc.reason || mw[0].Object != wantObject {
				t.Fatalf("entries = %+v", mw)
			}
		})
	}

	// When the audit store refuses, Sign fails Unavailable and returns no
	// signature; nothing is committed; service resumes when the store does.
	t.Run("audit store refuses", func(t *testing.T) {
		seq := faulty.LastSeq(t)
		f.set(nil, errors.New("disk full"))
		resp, err := sign(fcore, &signerv1.SignRequest{Scope: scope, Payload: []byte("p")})
		f.set(nil, nil)
		wantStatus(t, err, codes.Unavailable, "signing: audit log unavailable")
		if resp != nil {
			t.Fatal("a signature left the signer without its audit entry")
		}
		if got := faulty.AuditAfter(t, seq); len(got) != 0 {
			t.Fatalf("entries committed while the store refused: %+v", got)
		}
		if _, err := sign(fcore, &signerv1.SignRequest{Scope: scope, Payload: []byte("p")}); err != nil {
			t.Fatalf("after the store recovered: %v", err)
		}
	})
}

func wireReason(err error) string {
	for _, d := range status.Convert(err).Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			return i.Reason
		}
	}
	return ""
}

// Messages larger than the gRPC envelope never reach a handler; anything up
// to it is judged (and audited) by the handler.
func TestMessageLimits(t *testing.T) {
	env := signertest.Start(t, signertest.WithConfig(func(c *config.Signer) { c.MaxPayloadBytes = 1024 }))
	cc := env.Dial(t, env.Issue(t, signertest.CoreID))
	seq := env.LastSeq(t)
	_, err := sign(cc, &signerv1.SignRequest{Scope: scope, Payload: make([]byte, 2<<20)})
	wantStatus(t, err, codes.ResourceExhausted, "")
	if got := env.AuditAfter(t, seq); len(got) != 0 {
		t.Fatalf("a message over the envelope reached the interceptors: %+v", got)
	}
}

// Graceful shutdown lets in-flight RPCs finish with their audit entries.
func TestGracefulShutdownDrains(t *testing.T) {
	env := signertest.Start(t)
	cc := env.Dial(t, env.Issue(t, signertest.CoreID))
	if _, err := sign(cc, &signerv1.SignRequest{Scope: scope, Payload: []byte("warm")}); err != nil {
		t.Fatal(err)
	}
	const n = 64
	var wg sync.WaitGroup
	results := make(chan error, n)
	start := make(chan struct{})
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := sign(cc, &signerv1.SignRequest{Scope: scope, Payload: []byte("x")})
			results <- err
		}()
	}
	close(start)
	env.Stop()
	wg.Wait()
	close(results)
	ok := 0
	for err := range results {
		if err == nil {
			ok++
		} else if c := status.Code(err); c != codes.Unavailable {
			t.Errorf("during shutdown: %v", err)
		}
	}
	granted := 0
	for _, e := range env.Audit(t) {
		if e.Relation == "sign" && e.Reason == "granted" {
			granted++
		}
	}
	// Every signature returned has its entry and no entry lacks its
	// signature; the warm-up is the +1.
	if granted != ok+1 {
		t.Fatalf("%d signatures returned but %d granted entries", ok, granted-1)
	}
}

// A connection opened with a valid certificate is refused once that
// certificate expires: a connection must not outlive its identity.
func TestCertificateExpiringMidConnection(t *testing.T) {
	env := signertest.Start(t)
	notAfter := time.Now().Add(1500 * time.Millisecond)
	cc := env.Dial(t, env.Issue(t, signertest.CoreID, devpki.Validity(time.Now().Add(-time.Minute), notAfter)))
	if _, err := sign(cc, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")}); err != nil {
		t.Fatalf("while valid: %v", err)
	}
	// Wait out the certificate's validity (wall-clock time is the subject
	// here), then call again on the same connection.
	time.Sleep(time.Until(notAfter) + 100*time.Millisecond)
	seq := env.LastSeq(t)
	_, err := sign(cc, &signerv1.SignRequest{Scope: scope, Payload: []byte("m")})
	wantStatus(t, err, codes.PermissionDenied, "signing: client identity denied")
	adm, mw := rpcEntriesAny(t, env, seq)
	if len(adm) != 1 || adm[0].Reason != auditlog.ReasonInsufficientRelation || len(mw) != 1 || mw[0].Reason != auditlog.ReasonInsufficientRelation {
		t.Fatalf("entries %+v %+v", adm, mw)
	}
}

// The metrics cover RPCs, admissions, audit commits, provider signatures,
// key states and the SVID expiry, with bounded labels and nothing a caller
// sent.
func TestMetrics(t *testing.T) {
	env := signertest.Start(t)
	core := signerv1.NewSignerServiceClient(env.Dial(t, env.Issue(t, signertest.CoreID)))
	ctx := context.Background()
	core.Sign(ctx, &signerv1.SignRequest{Scope: scope, Payload: []byte("metrics-payload-marker")})
	core.Sign(ctx, &signerv1.SignRequest{Scope: "scope-from-the-caller-xyz", Payload: []byte("m")})
	signerv1.NewSignerServiceClient(env.Dial(t, nil)).Sign(ctx, &signerv1.SignRequest{Scope: scope})
	rec := httptest.NewRecorder()
	env.Metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`plexsphere_signer_rpcs_total{code="OK",method="/plexsphere.signer.v1.SignerService/Sign"} 1`,
		`plexsphere_signer_rpcs_total{code="NotFound",method="/plexsphere.signer.v1.SignerService/Sign"} 1`,
		`plexsphere_signer_rpcs_total{code="PermissionDenied",method="/plexsphere.signer.v1.SignerService/Sign"} 1`,
		`plexsphere_signer_admissions_total{outcome="denied_no_client_cert",service="plexsphere.signer.v1.SignerService"} 1`,
		`plexsphere_signer_admissions_total{outcome="granted",service="plexsphere.signer.v1.SignerService"} 2`,
		`plexsphere_signer_provider_sign_duration_seconds_count{provider="local"} 1`,
		`plexsphere_signer_keys{scope="payments",state="ACTIVE"} 1`,
		`plexsphere_signer_key_state_since_timestamp_seconds{scope="payments",state="ACTIVE"}`,
		"plexsphere_signer_audit_batch_entries_count",
		"plexsphere_signer_audit_commit_duration_seconds_count",
		"plexsphere_signer_svid_expiry_timestamp_seconds",
		"plexsphere_signer_rpc_duration_seconds_bucket",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	for _, never := range []string{"metrics-payload-marker", "scope-from-the-caller-xyz"} {
		if strings.Contains(body, never) {
			t.Errorf("metrics carry caller input %q", never)
		}
	}
}

// sickProvider reports unhealthy while down is set.
type sickProvider struct {
	keyprovider.Provider
	down *atomic.Bool
}

func (p sickProvider) Health(ctx context.Context) error {
	if p.down.Load() {
		return signerr.ErrProviderUnavailable
	}
	return p.Provider.Health(ctx)
}

// gRPC health on the ops port follows the store and the provider; /readyz
// answers the same question from the state the background check keeps (a
// probe never costs a database round trip).
func TestHealth(t *testing.T) {
	down := new(atomic.Bool)
	env := signertest.Start(t, signertest.WithOps(), signertest.WithProvider(sickProvider{signertest.NewLocalProvider(t), down}))
	cc, err := grpc.NewClient(env.OpsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watch, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{Service: signerv1.SignerService_ServiceDesc.ServiceName})
	if err != nil {
		t.Fatal(err)
	}
	until := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		for {
			r, err := watch.Recv()
			if err != nil {
				t.Fatalf("waiting for %v: %v", want, err)
			}
			if r.Status == want {
				return
			}
		}
	}
	readyz := func() int {
		resp, err := http.Get("http://" + env.OpsAddr + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	until(healthpb.HealthCheckResponse_SERVING)
	if code := readyz(); code != http.StatusOK {
		t.Fatalf("/readyz = %d while healthy", code)
	}
	// dependency_up tells which dependency failed (the alerts use it).
	dependencies := func(store, provider string) {
		t.Helper()
		body := scrape(t, env)
		for _, want := range []string{`plexsphere_signer_dependency_up{dependency="store"} ` + store,
			`plexsphere_signer_dependency_up{dependency="provider"} ` + provider} {
			if !strings.Contains(body, want+"\n") {
				t.Errorf("metrics lack %s", want)
			}
		}
	}
	dependencies("1", "1")
	down.Store(true)
	until(healthpb.HealthCheckResponse_NOT_SERVING)
	if code := readyz(); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d with the provider down", code)
	}
	dependencies("1", "0")
	down.Store(false)
	until(healthpb.HealthCheckResponse_SERVING)
	if code := readyz(); code != http.StatusOK {
		t.Fatalf("/readyz = %d after recovery", code)
	}
	dependencies("1", "1")
}
