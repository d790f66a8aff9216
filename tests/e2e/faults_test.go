package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"

	"github.com/plexsphere/signer/internal/ctl"
	"github.com/plexsphere/signer/internal/testing/hsmtest"
)

// scenario is one row of the fault matrix.
type scenario struct {
	name     string
	replicas int
	setup    func(t *testing.T, s *signerSpec) string // before the topology starts; returns the HSM dir, if any
	fault    func(t *testing.T, f *faultCtx)          // inject, and put right
	// restarted names signer containers the fault itself stops.
	restarted map[int]bool
	// maxOutage, if set, bounds the longest time between two signatures
	// the core received (the scenario promises no full outage).
	maxOutage time.Duration
}

// killReplica kills signer i at once (SIGKILL: no drain, no goodbye to
// Postgres).
func killReplica(i int) func(t *testing.T, f *faultCtx) {
	return func(t *testing.T, f *faultCtx) {
		zero := time.Duration(0)
		must(t, f.tp.signers[i].Stop(context.Background(), &zero))
	}
}

// faultCtx is what a fault may touch.
type faultCtx struct {
	tp     *topology
	pod    pod
	hsmDir string
	note   string // a figure of the fault itself, for the table
}

// result is one measured row.
type result struct {
	name       string
	calls      int // signatures + failures the core saw
	signatures int
	granted    int
	errors     map[string]int
	longest    time.Duration // longest time between two signatures
	note       string
	violations []string
}

// The fault matrix: each fault hits a loaded container topology (a core
// signing every 5 ms through its sidecar) and is then put right. For each,
// the invariants hold: every signature the core received has exactly one
// granted audit row; every row carries a decision; the only failures are
// Unavailable; signing resumes afterwards with no signer restarted (except
// the one the fault kills); where a scenario promises no full outage, the
// longest time between two signatures stays under its bound. The measured
// table (calls, errors, longest outage) is printed, and written to
// $FAULT_MATRIX_REPORT when set (make test prints it).
func TestFaultMatrix(t *testing.T) {
	requireImages(t)
	hsmtest.Setup(t) // SoftHSM2 must be installed for the token scenario
	scenarios := []scenario{
		{name: "signer replica killed", replicas: 2, restarted: map[int]bool{1: true}, fault: killReplica(1)},
		// Three replicas share the log's append lock, and the one killed
		// may hold it, mid-transaction: Postgres must release it and the
		// other two go on appending onto the head the dead one left.
		{name: "one of three replicas killed", replicas: 3, restarted: map[int]bool{1: true}, fault: killReplica(1)},
		{name: "Postgres stopped and restarted", replicas: 2, fault: func(t *testing.T, f *faultCtx) {
			stop := 5 * time.Second
			must(t, f.tp.pg.Stop(context.Background(), &stop))
			f.waitFailures(t, 10)
			must(t, f.tp.pg.Start(context.Background()))
		}},
		// A crash, not a shutdown: commits whose WAL flush had not
		// returned are lost (the append commits before its flush, outside
		// the log's lock; docs/scaling.md). None of their signatures may
		// have been answered.
		{name: "Postgres killed and restarted", replicas: 2, fault: func(t *testing.T, f *faultCtx) {
			zero := time.Duration(0)
			must(t, f.tp.pg.Stop(context.Background(), &zero))
			f.waitFailures(t, 10)
			must(t, f.tp.pg.Start(context.Background()))
		}},
		{name: "HSM token removed", replicas: 1, setup: hsmSetup, fault: func(t *testing.T, f *faultCtx) {
			tokens := filepath.Join(f.hsmDir, "tokens")
			away := filepath.Join(f.hsmDir, "away")
			must(t, os.Rename(tokens, away))
			must(t, os.Mkdir(tokens, 0o777))
			os.Chmod(tokens, 0o777)
			f.waitFailures(t, 10)
			must(t, os.Remove(tokens))
			must(t, os.Rename(away, tokens))
		}},
		{name: "SVIDs rotated", replicas: 2, fault: func(t *testing.T, f *faultCtx) {
			before := f.svidExpiry(t)
			for name, id := range map[string]string{"signer": signerID, "core": coreID} {
				svid, err := f.tp.ca.Issue(id, validFor(2*time.Hour))
				must(t, err)
				writeAtomic(t, filepath.Join(f.tp.dir, name+".key"), svid.KeyPEM)
				writeAtomic(t, filepath.Join(f.tp.dir, name+".crt"), svid.CertPEM)
			}
			f.eventually(t, "the signer serving its new SVID", func() bool { return f.svidExpiry(t) != before })
		}},
		{name: "key rotated", replicas: 2, fault: func(t *testing.T, f *faultCtx) {
			key := f.operator(t, "--output", "json", "rotate", "open", "payments")
			i := strings.Index(key, `"key_id": "`)
			if i < 0 {
				t.Fatalf("rotate open: %s", key)
			}
			id := key[i+len(`"key_id": "`):][:24]
			f.eventually(t, "commit after the pre-publication window", func() bool {
				return f.operatorCode(t, "rotate", "commit", "payments", id) == ctl.ExitOK
			})
		}},
		{name: "sidecar restarted", replicas: 2, fault: func(t *testing.T, f *faultCtx) {
			stop := 5 * time.Second
			must(t, f.pod.sidecar.Stop(context.Background(), &stop))
			f.waitFailures(t, 10)
			must(t, f.pod.sidecar.Start(context.Background()))
		}},
		// Failover is the sidecar's job: replica 1 is killed and stays down
		// long enough for gRPC's default reconnect backoff to reach ~20 s;
		// once it is back it must be used within seconds, so killing
		// replica 2 afterwards is no outage (it was ~35 s with the default
		// backoff).
		{name: "one back, then the other killed", replicas: 2, restarted: map[int]bool{0: true, 1: true}, maxOutage: 3 * time.Second,
			fault: func(t *testing.T, f *faultCtx) {
				zero := time.Duration(0)
				ctx := context.Background()
				must(t, f.tp.signers[0].Stop(ctx, &zero))
				// The length of the fault, not a synchronisation: replica 1
				// stays down while the sidecar keeps signing on replica 2.
				time.Sleep(downFor)
				must(t, f.tp.signers[0].Start(ctx))
				f.eventually(t, "signer-1 ready again", func() bool { return f.ready(t, 0) })
				// A rolling update would take replica 2 down now that 1 is
				// ready; the sidecar has the few seconds it is allowed to
				// start using replica 1 (watched, for the figure).
				back := time.Now()
				f.note = fmt.Sprintf("signer-1 unused %v after ready", reuseWithin)
				for used := false; time.Since(back) < reuseWithin; time.Sleep(100 * time.Millisecond) {
					if !used && f.signed(t, 0) > 0 {
						used = true
						f.note = fmt.Sprintf("signer-1 used %.1fs after ready", time.Since(back).Seconds())
					}
				}
				must(t, f.tp.signers[1].Stop(ctx, &zero))
			}},
	}
	var results []result
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) { results = append(results, runScenario(t, sc)) })
	}
	table := formatTable(results)
	fmt.Print(table)
	t.Log("\n" + table)
	if path := os.Getenv("FAULT_MATRIX_REPORT"); path != "" {
		os.WriteFile(path, []byte(table), 0o644)
	}
}

// downFor is how long the failover scenario keeps a replica down: gRPC's
// default backoff (1 s x1.6, up to 120 s) has then grown to about 20 s.
const downFor = 30 * time.Second

// reuseWithin is how soon after it is ready a returning replica must be in
// use: the failover scenario kills the other replica then.
const reuseWithin = 3 * time.Second

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	must(t, os.WriteFile(tmp, data, 0o644))
	must(t, os.Rename(tmp, path))
}

func hsmSetup(t *testing.T, s *signerSpec) string {
	dir := t.TempDir()
	os.Chmod(dir, 0o777)
	tokens := filepath.Join(dir, "tokens")
	must(t, os.Mkdir(tokens, 0o777))
	hostConf := filepath.Join(dir, "host.conf")
	must(t, os.WriteFile(hostConf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "softhsm2.conf"), []byte("directories.tokendir = /hsm/tokens\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "pin"), []byte("faults-pin"), 0o644))
	hsmtest.InitToken(t, hostConf, "faults", "1234", "faults-pin")
	// The signer runs as uid 65532 and SoftHSM2 writes lock and object files.
	exec.Command("chmod", "-R", "a+rwX", dir).Run()
	s.image = hsmImage
	s.binds = append(s.binds, dir+":/hsm")
	for k, v := range map[string]string{"SIGNER_PROVIDER": "pkcs11", "SIGNER_PKCS11_MODULE": "/usr/lib/softhsm/libsofthsm2.so",
		"SIGNER_PKCS11_TOKEN_LABEL": "faults", "SIGNER_PKCS11_PIN_FILE": "/hsm/pin", "SOFTHSM2_CONF": "/hsm/softhsm2.conf", "SIGNER_LOCAL_KEK_FILE": ""} {
		s.env[k] = v
	}
	return dir
}

func runScenario(t *testing.T, sc scenario) result {
	var hsmDir string
	tp := startTopology(t, sc.replicas, func(s *signerSpec) {
		// Fast reloads and short windows, so each fault plays out in seconds.
		for k, v := range map[string]string{"SIGNER_IDENTITY_RELOAD": "1s", "SIGNER_MAX_CONNECTION_AGE": "5s",
			"SIGNER_KEY_CACHE_TTL": "1s", "SIGNER_ROTATION_PREPUBLISH": "2s", "SIGNER_ROTATION_VERIFY_ONLY": "2s"} {
			s.env[k] = v
		}
		if sc.setup != nil {
			hsmDir = sc.setup(t, s)
		}
	})
	started := map[int]string{}
	for i, s := range tp.signers {
		started[i] = startedAt(t, s)
	}
	p := tp.pod(t, "load", "core", true, 100000, 5*time.Millisecond, false)
	f := &faultCtx{tp: tp, pod: p, hsmDir: hsmDir}
	f.waitSignatures(t, 100)
	sc.fault(t, f)
	after := parseCore(logs(t, p.core))
	f.waitSignatures(t, len(after.signatures)+100) // resumed, without a restart
	stop := 10 * time.Second
	must(t, p.core.Stop(context.Background(), &stop))
	res := parseCore(logs(t, p.core))

	r := result{name: sc.name, signatures: len(res.signatures), errors: res.failures, note: f.note}
	r.calls, r.longest = outage(t, p.core)
	if sc.maxOutage > 0 && r.longest > sc.maxOutage {
		r.violations = append(r.violations, fmt.Sprintf("no signature for %v (bound %v) although a replica was up", r.longest, sc.maxOutage))
	}
	rows := auditRows(t, tp.pgDSN(t))
	granted := map[string]int{}
	for _, row := range rows {
		if row.relation == "sign" && row.reason == "granted" {
			granted[row.sig]++
			r.granted++
		}
		switch row.reason {
		case "granted", "insufficient_relation", "caveat_violation":
		default:
			r.violations = append(r.violations, fmt.Sprintf("row without a decision: %+v", row))
		}
	}
	for _, s := range res.signatures {
		if granted[s] != 1 {
			r.violations = append(r.violations, fmt.Sprintf("signature %s… has %d granted rows", s[:12], granted[s]))
		}
	}
	for code := range res.failures {
		if code != "Unavailable" {
			r.violations = append(r.violations, "failures with "+code)
		}
	}
	if res.fatal != "" {
		r.violations = append(r.violations, res.fatal)
	}
	for i, s := range tp.signers {
		if !sc.restarted[i] && startedAt(t, s) != started[i] {
			r.violations = append(r.violations, fmt.Sprintf("signer-%d was restarted", i+1))
		}
	}
	for _, v := range r.violations {
		t.Error(v)
	}
	return r
}

func startedAt(t *testing.T, c *testcontainers.DockerContainer) string {
	st, err := c.State(context.Background())
	must(t, err)
	return st.StartedAt
}

func (f *faultCtx) eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 90s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ready reports whether signer i's /readyz answers 200.
func (f *faultCtx) ready(t *testing.T, i int) bool {
	port, err := f.tp.signers[i].MappedPort(context.Background(), "9090/tcp")
	if err != nil {
		return false
	}
	resp, err := http.Get("http://127.0.0.1:" + port.Port() + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// signed reads how many Sign calls signer i answered OK since it started.
func (f *faultCtx) signed(t *testing.T, i int) int {
	port, err := f.tp.signers[i].MappedPort(context.Background(), "9090/tcp")
	if err != nil {
		return 0
	}
	resp, err := http.Get("http://127.0.0.1:" + port.Port() + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	const metric = `plexsphere_signer_rpcs_total{code="OK",method="/plexsphere.signer.v1.SignerService/Sign"} `
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, metric); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return int(n)
		}
	}
	return 0
}

// outage reads the core's log with Docker's timestamps: how many calls it
// made, and the longest time between two signatures it received.
func outage(t *testing.T, core *testcontainers.DockerContainer) (calls int, longest time.Duration) {
	t.Helper()
	p, err := testcontainers.NewDockerProvider()
	must(t, err)
	defer p.Close()
	rc, err := p.Client().ContainerLogs(context.Background(), core.GetContainerID(), client.ContainerLogsOptions{ShowStdout: true, Timestamps: true})
	must(t, err)
	defer rc.Close()
	var out bytes.Buffer
	_, err = stdcopy.StdCopy(&out, io.Discard, rc)
	must(t, err)
	var last time.Time
	for _, line := range strings.Split(out.String(), "\n") {
		ts, text, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(text, "failed: "):
			calls++
		case strings.HasPrefix(text, "signed and verified:"):
			calls++
			if !last.IsZero() && at.Sub(last) > longest {
				longest = at.Sub(last)
			}
			last = at
		}
	}
	return calls, longest
}

func (f *faultCtx) waitSignatures(t *testing.T, n int) {
	t.Helper()
	f.eventually(t, fmt.Sprintf("%d signatures", n), func() bool { return len(parseCore(logs(t, f.pod.core)).signatures) >= n })
}

func (f *faultCtx) waitFailures(t *testing.T, n int) {
	t.Helper()
	f.eventually(t, fmt.Sprintf("%d failures", n), func() bool { return sum(parseCore(logs(t, f.pod.core)).failures) >= n })
}

// svidExpiry reads signer-1's SVID expiry from its /metrics.
func (f *faultCtx) svidExpiry(t *testing.T) string {
	t.Helper()
	port, err := f.tp.signers[0].MappedPort(context.Background(), "9090/tcp")
	must(t, err)
	resp, err := http.Get("http://127.0.0.1:" + port.Port() + "/metrics")
	must(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "plexsphere_signer_svid_expiry_timestamp_seconds ") {
			return l
		}
	}
	t.Fatal("no SVID expiry metric")
	return ""
}

// operator runs signerctl against signer-1 as the operator.
func (f *faultCtx) operator(t *testing.T, args ...string) string {
	t.Helper()
	out, code := f.ctl(t, args...)
	if code != ctl.ExitOK {
		t.Fatalf("signerctl %v: exit %d\n%s", args, code, out)
	}
	return out
}

func (f *faultCtx) operatorCode(t *testing.T, args ...string) int {
	_, code := f.ctl(t, args...)
	return code
}

func (f *faultCtx) ctl(t *testing.T, args ...string) (string, int) {
	port, err := f.tp.signers[0].MappedPort(context.Background(), "8443/tcp")
	must(t, err)
	var out bytes.Buffer
	code := ctl.Main(context.Background(), append([]string{"--signer", "127.0.0.1:" + port.Port(), "--signer-spiffe-id", signerID,
		"--svid-cert", filepath.Join(f.tp.dir, "operator.crt"), "--svid-key", filepath.Join(f.tp.dir, "operator.key"),
		"--trust-bundle", filepath.Join(f.tp.dir, "bundle.crt")}, args...), &out, &out)
	return out.String(), code
}

func formatTable(rs []result) string {
	var b strings.Builder
	fmt.Fprintln(&b, "fault matrix (container topology, core signing every 5 ms through its sidecar)")
	fmt.Fprintf(&b, "%-32s %7s %10s %12s  %-24s %14s  %s\n", "fault", "calls", "signatures", "granted rows", "errors by code", "longest outage", "invariants")
	for _, r := range rs {
		var codes []string
		for c, n := range r.errors {
			codes = append(codes, fmt.Sprintf("%s=%d", c, n))
		}
		sort.Strings(codes)
		errs := strings.Join(codes, " ")
		if errs == "" {
			errs = "none"
		}
		inv := "hold"
		if len(r.violations) > 0 {
			inv = fmt.Sprintf("%d VIOLATED", len(r.violations))
		}
		if r.note != "" {
			inv += " (" + r.note + ")"
		}
		fmt.Fprintf(&b, "%-32s %7d %10d %12d  %-24s %13.2fs  %s\n", r.name, r.calls, r.signatures, r.granted, errs, r.longest.Seconds(), inv)
	}
	return b.String()
}
