package e2e

import (
	"encoding/hex"

	"context"
	"github.com/plexsphere/signer/client/auditlog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// auditRows reads (subject, relation, reason, signature digest) of every
// entry, from the host, with SQL.
type row struct{ subject, relation, reason, sig string }

func auditRows(t *testing.T, dsn string) []row {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// The stored leaves, decoded with the public format.
	rows, err := conn.Query(ctx, `SELECT leaf FROM audit_entries ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var leaf []byte
		if err := r.Scan(&leaf); err != nil {
			return row{}, err
		}
		e, err := auditlog.ParseLeaf(leaf)
		return row{e.Subject, e.Relation, e.Reason, hex.EncodeToString(e.SignatureSHA256)}, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The core signs and verifies through its sidecar over localhost; a pod
// whose sidecar holds another identity is denied and audited; a pod off the
// signer's network cannot connect at all.
func TestContainerTopology(t *testing.T) {
	tp := startTopology(t, 1)

	good := tp.pod(t, "good", "core", true, 5, 50*time.Millisecond, true).core
	res := parseCore(logs(t, good))
	if len(res.signatures) != 5 || len(res.failures) != 0 || res.fatal != "" {
		t.Fatalf("core through its sidecar: %d signatures, failures %v, %s\n%s", len(res.signatures), res.failures, res.fatal, logs(t, good))
	}

	intruder := tp.pod(t, "intruder", "intruder", true, 1, time.Second, true).core
	if out := logs(t, intruder); !strings.Contains(out, "identity denied") {
		t.Fatalf("a pod with another identity was not denied:\n%s", out)
	}

	offnet := tp.pod(t, "offnet", "offnet", false, 1, time.Second, true).core
	if out := logs(t, offnet); !strings.Contains(out, "unavailable") {
		t.Fatalf("a pod off the signer's network got through:\n%s", out)
	}

	var granted, intruderDenied, offnetSeen int
	for _, r := range auditRows(t, tp.pgDSN(t)) {
		switch {
		case r.relation == "sign" && r.reason == "granted":
			granted++
		case r.subject == "service:signer:peer="+intruderID && r.reason == "insufficient_relation":
			intruderDenied++
		case strings.Contains(r.subject, offNetID):
			offnetSeen++
		}
	}
	if granted != 5 || intruderDenied != 1 || offnetSeen != 0 {
		t.Fatalf("audit: %d granted signs (want 5), %d intruder denials (want 1), %d entries from the off-network pod (want 0)", granted, intruderDenied, offnetSeen)
	}
}

// Killing a signer replica mid-load loses no audited signature: every
// signature the core received has exactly one granted row, and the only
// failures are Unavailable.
func TestKillSignerReplicaMidLoad(t *testing.T) {
	tp := startTopology(t, 2)
	const n = 400
	core := tp.pod(t, "load", "core", true, n, 10*time.Millisecond, false).core
	// Kill replica 2 once the load is well under way.
	waitLog(t, core, `#100"`, time.Minute)
	timeout := time.Duration(0)
	if err := tp.signers[1].Stop(context.Background(), &timeout); err != nil {
		t.Fatal(err)
	}
	waitExit(t, core, 3*time.Minute)
	res := parseCore(logs(t, core))
	for code := range res.failures {
		if code != "Unavailable" {
			t.Fatalf("failures %v, want only Unavailable", res.failures)
		}
	}
	if res.fatal != "" || len(res.signatures)+sum(res.failures) != n {
		t.Fatalf("%d signatures + %v failures of %d (%s)", len(res.signatures), res.failures, n, res.fatal)
	}
	rows := map[string]int{}
	for _, r := range auditRows(t, tp.pgDSN(t)) {
		if r.relation == "sign" && r.reason == "granted" {
			rows[r.sig]++
		}
	}
	for _, s := range res.signatures {
		if rows[s] != 1 {
			t.Fatalf("signature %s… has %d granted rows, want 1", s[:12], rows[s])
		}
	}
	t.Logf("replica killed mid-load: %d signatures returned, failures %v, every signature audited once", len(res.signatures), res.failures)
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
