package keyring_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
	"github.com/plexsphere/signer/internal/keyring"
	"github.com/plexsphere/signer/internal/signing"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/testing/signertest"
)

func TestAutoRotation(t *testing.T) {
	ctx := context.Background()
	st := signertest.OpenBolt(t)
	w := audit.NewWriter(st, audit.WriterOptions{})
	defer w.Close()
	clock := signertest.NewClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	kr := keyring.New(st, signertest.NewLocalProvider(t), time.Second, clock.Now)
	rot := keyring.NewLifecycle(st, signertest.NewLocalProvider(t), kr, keyring.Windows{PrePublish: time.Minute, VerifyOnly: time.Minute}, clock.Now)
	first, _, err := rot.Bootstrap(ctx, "s", w)
	if err != nil {
		t.Fatal(err)
	}
	auto := keyring.NewAutoRotator(rot, w, []keyring.Schedule{{Scope: "s", Period: time.Hour, PrePublish: 10 * time.Minute, VerifyOnly: 30 * time.Minute}}, signing.Outcome, nil)
	states := func() string {
		keys, err := st.Keys(ctx, "s")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, k := range keys {
			out = append(out, k.State.String())
		}
		return strings.Join(out, " ")
	}
	tick := func(advance time.Duration, want string) {
		t.Helper()
		clock.Advance(advance)
		if err := auto.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		if got := states(); got != want {
			t.Fatalf("after +%v: %s, want %s", advance, got, want)
		}
	}
	tick(0, "ACTIVE")
	tick(49*time.Minute, "ACTIVE")              // 11 min before the period ends
	tick(time.Minute, "ACTIVE PENDING")         // period − pre-publication: open
	tick(9*time.Minute, "ACTIVE PENDING")       // still pre-publishing
	tick(time.Minute, "PREVIOUS ACTIVE")        // published 10 min: commit
	tick(29*time.Minute, "PREVIOUS ACTIVE")     // verify-only window
	tick(time.Minute, "RETIRED ACTIVE")         // retire
	tick(19*time.Minute, "RETIRED ACTIVE")      // next open is due at activation + 60 − 10 min
	tick(time.Minute, "RETIRED ACTIVE PENDING") // next cycle opens

	entries, err := store.ListAudit(ctx, st, store.AuditQuery{Relation: auditlog.RelationRotate})
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, e := range entries {
		steps = append(steps, e.Method)
		if e.Reason != auditlog.ReasonGranted || e.Subject != auditlog.SubjectSigner {
			t.Fatalf("entry %+v", e)
		}
	}
	if got := strings.Join(steps, ","); got != "bootstrap,auto-rotate/open,auto-rotate/commit,auto-rotate/retire,auto-rotate/open" {
		t.Fatalf("rotate entries in order: %s", got)
	}
	if !strings.HasSuffix(entries[3].Object, ":"+first.ID) {
		t.Fatalf("retired %s, want the bootstrap key %s", entries[3].Object, first.ID)
	}
}
