package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/identity"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/testing/signertest"
	"github.com/plexsphere/signer/internal/testing/spiretest"
	"github.com/plexsphere/signer/sidecar"
)

const strangerID = "spiffe://example.org/ns/other/sa/stranger"

// spireWorld is SPIRE, a signer in this process with its SVID from the
// agent, and sidecar binaries registered under the core's and a stranger's
// identities.
type spireWorld struct {
	spire    *spiretest.Server
	signer   *signertest.Env
	src      identity.Source
	core     string // sidecar binary registered as the core
	stranger string // the same binary elsewhere, registered as a stranger
}

func startSPIREWorld(t *testing.T, ttl, maxConnAge time.Duration) *spireWorld {
	t.Helper()
	sp := spiretest.Start(t, ttl)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	w := &spireWorld{spire: sp}
	w.core = buildBinary(t, "./cmd/plexsphere-sidecar")
	w.stranger = filepath.Join(t.TempDir(), "stranger-sidecar")
	copyFile(t, w.core, w.stranger)
	sp.Register(t, signertest.SignerID, self, 0)
	sp.Register(t, signertest.CoreID, w.core, 0)
	sp.Register(t, strangerID, w.stranger, 0)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	w.src, err = identity.Open(ctx, config.Identity{WorkloadAPIAddr: sp.WorkloadAPI}, nil)
	if err != nil {
		t.Fatalf("signer SVID from the agent: %v", err)
	}
	t.Cleanup(func() { w.src.Close() })
	if svid, _ := w.src.GetX509SVID(); svid.ID.String() != signertest.SignerID {
		t.Fatalf("this process got %s, want %s", svid.ID, signertest.SignerID)
	}
	w.signer = signertest.Start(t, signertest.WithIdentity(w.src), signertest.WithConfig(func(c *config.Signer) {
		c.MaxConnectionAge = maxConnAge
	}))
	return w
}

func copyFile(t *testing.T, from, to string) {
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	out.Close()
}

// sidecar runs a sidecar binary that takes its identity from the agent and
// waits, through its health service, until its upstream handshake works.
func (w *spireWorld) sidecar(t *testing.T, bin string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	cmd := exec.Command(bin, "--listen", "unix://"+sock, "--upstream", w.signer.Addr,
		"--signer-spiffe-id", signertest.SignerID, "--workload-api-addr", w.spire.WorkloadAPI, "--log-level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() })
	target := "unix://" + sock
	deadline := time.Now().Add(90 * time.Second)
	for {
		cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			watch, werr := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{Service: sidecar.HealthService})
			for werr == nil {
				var r *healthpb.HealthCheckResponse
				if r, werr = watch.Recv(); werr == nil && r.Status == healthpb.HealthCheckResponse_SERVING {
					cancel()
					cc.Close()
					return target
				}
			}
			cancel()
			cc.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar %s never became SERVING", bin)
		}
		time.Sleep(200 * time.Millisecond) // the socket is not there yet
	}
}

// The sidecar gets its SVID from the SPIRE agent; the signer admits the
// registered core identity and denies a registered stranger, audited.
func TestSPIREIdentities(t *testing.T) {
	w := startSPIREWorld(t, time.Hour, 10*time.Minute)
	ctx := context.Background()
	core, err := client.Dial(ctx, w.sidecar(t, w.core))
	if err != nil {
		t.Fatal(err)
	}
	defer core.Close()
	sig, err := core.Sign(ctx, signertest.Scope, []byte("spire"))
	if err != nil {
		t.Fatal(err)
	}
	if err := core.Verify(ctx, signertest.Scope, sig.KeyID, []byte("spire"), sig.Bytes); err != nil {
		t.Fatal(err)
	}
	stranger, err := client.Dial(ctx, w.sidecar(t, w.stranger))
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	_, err = stranger.Sign(ctx, signertest.Scope, []byte("spire"))
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("stranger: %v", err)
	}
	entries, err := store.ListAudit(ctx, w.signer.Store, store.AuditQuery{Relation: auditlog.RelationConnect})
	if err != nil {
		t.Fatal(err)
	}
	var admitted, denied int
	for _, e := range entries {
		switch {
		case e.Subject == auditlog.SubjectPeer(signertest.CoreID) && e.Reason == auditlog.ReasonGranted:
			admitted++
		case e.Subject == auditlog.SubjectPeer(strangerID) && e.Reason == auditlog.ReasonInsufficientRelation:
			denied++
		}
	}
	if admitted == 0 || denied != 1 {
		t.Fatalf("admission entries: %d granted for the core, %d denials of the stranger", admitted, denied)
	}
}

// SVIDs with a 1-minute TTL rotate every ~30 s; signing through the sidecar
// without pause for longer than two rotations (connections recycled every
// 15 s so new handshakes use the new SVIDs) has zero failures.
func TestSPIRESVIDRotationWithoutDroppedCalls(t *testing.T) {
	if testing.Short() {
		t.Skip("75 s of load; run without -short")
	}
	w := startSPIREWorld(t, time.Minute, 15*time.Second)
	ctx := context.Background()
	core, err := client.Dial(ctx, w.sidecar(t, w.core))
	if err != nil {
		t.Fatal(err)
	}
	defer core.Close()
	serials := map[string]bool{}
	note := func() {
		svid, err := w.src.GetX509SVID()
		if err == nil {
			serials[svid.Certificates[0].SerialNumber.String()] = true
		}
	}
	var signs, failures atomic.Int64
	end := time.Now().Add(75 * time.Second)
	done := make(chan struct{})
	for g := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := 0; time.Now().Before(end); i++ {
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				msg := fmt.Appendf(nil, "%d-%d", g, i)
				sig, err := core.Sign(cctx, signertest.Scope, msg)
				if err == nil {
					err = core.Verify(cctx, signertest.Scope, sig.KeyID, msg, sig.Bytes)
				}
				cancel()
				signs.Add(1)
				if err != nil {
					failures.Add(1)
					t.Errorf("sign during rotation: %v", err)
				}
			}
		}()
	}
	tick := time.NewTicker(time.Second)
	for running := 4; running > 0; {
		select {
		case <-done:
			running--
		case <-tick.C:
			note()
		}
	}
	tick.Stop()
	note()
	if failures.Load() != 0 || len(serials) < 3 {
		t.Fatalf("%d failures in %d signs; the signer's SVID took %d serials (want ≥ 3: two rotations)", failures.Load(), signs.Load(), len(serials))
	}
	t.Logf("%d signs over 75 s across %d SVIDs of the signer, 0 failures", signs.Load(), len(serials))
}
