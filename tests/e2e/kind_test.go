//go:build e2e

package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// These run against the cluster scripts/e2e-kind.sh sets up (KUBECONFIG,
// kubectl and helm on PATH come from it): SPIRE with hostPath sockets, the
// signer chart (two replicas on Postgres), the example core with its native
// sidecar in namespace apps. Each scenario prints its figures on lines
// starting "kind: ".

const (
	nsSigner = "plexsphere"
	nsCore   = "apps"
	kindTD   = "example.org"
)

func figure(t *testing.T, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf("kind: "+t.Name()+": "+format, args...)
	fmt.Println(line)
}

func kubectlE(args ...string) (string, error) {
	out, err := exec.Command("kubectl", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := kubectlE(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func helm(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("helm", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func apply(t *testing.T, ns, manifest string) {
	t.Helper()
	cmd := exec.Command("kubectl", "-n", ns, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("apply: %v\n%s\n%s", err, out, manifest)
	}
}

// eventually polls check until it returns "" or the deadline passes.
func eventually(t *testing.T, within time.Duration, check func() string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		why := check()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", within, why)
		}
		time.Sleep(time.Second)
	}
}

// coreLine is one line of the example core's output.
type coreLine struct {
	at    time.Time
	keyID string
	sig   string // hex SHA-256 of the signature, as the audit log holds it
	fail  string // the gRPC code of a failed Sign
}

// coreLog reads a core container's output with the kubelet's timestamps.
func coreLog(t *testing.T, ns, pod, container string) []coreLine {
	t.Helper()
	out := kubectl(t, "-n", ns, "logs", pod, "-c", container, "--timestamps")
	var lines []coreLine
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		ts, text, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			continue
		}
		l := coreLine{at: at}
		switch {
		case strings.HasPrefix(text, "signed and verified:"):
			for _, f := range strings.Fields(text) {
				if v, ok := strings.CutPrefix(f, "key_id="); ok {
					l.keyID = v
				}
				if v, ok := strings.CutPrefix(f, "signature="); ok {
					raw, err := base64.RawStdEncoding.DecodeString(v)
					if err != nil {
						t.Fatalf("core signature %q: %v", v, err)
					}
					h := sha256.Sum256(raw)
					l.sig = hex.EncodeToString(h[:])
				}
			}
		case strings.HasPrefix(text, "failed: "):
			l.fail, _, _ = strings.Cut(strings.TrimPrefix(text, "failed: "), ":")
		default:
			continue
		}
		lines = append(lines, l)
	}
	return lines
}

// tally counts signatures and failures by code among lines in [from, to).
func tally(lines []coreLine, from, to time.Time) (sigs int, fails map[string]int) {
	fails = map[string]int{}
	for _, l := range lines {
		if l.at.Before(from) || !l.at.Before(to) {
			continue
		}
		if l.sig != "" {
			sigs++
		} else {
			fails[l.fail]++
		}
	}
	return sigs, fails
}

func corePod(t *testing.T, release string) string {
	t.Helper()
	pods := strings.Fields(kubectl(t, "-n", nsCore, "get", "pods", "-l", "app.kubernetes.io/instance="+release,
		"--field-selector=status.phase=Running", "-o", "name"))
	if len(pods) != 1 {
		t.Fatalf("want one running %s pod, have %v", release, pods)
	}
	return pods[0]
}

// operatorSpec is a signerctl pod spec (indented for a pod template) with
// the operator's identity (SPIRE entry ns/plexsphere/sa/signer-operator,
// from the agent socket by hostPath); operatorLabels carry the label the
// signer's NetworkPolicy admits.
const operatorLabels = `{plexsphere.io/signer-client: "true", e2e: operator}`

func operatorSpec(release, restart string, args ...string) string {
	a, _ := json.Marshal(args)
	return fmt.Sprintf(`
      serviceAccountName: signer-operator
      automountServiceAccountToken: false
      restartPolicy: %[1]s
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {type: RuntimeDefault}
      initContainers:
        # Start signerctl only once the policy admits this new pod.
        - name: reachable
          image: plexsphere/e2e-probe:dev
          imagePullPolicy: Never
          args: ["--until-ok", "60s", "--every", "200ms", "--timeout", "1s", "%[3]s.plexsphere.svc:8443"]
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: ["ALL"]}
      containers:
        - name: signerctl
          image: plexsphere/signerctl:dev
          imagePullPolicy: Never
          args: %[2]s
          env:
            - {name: SIGNERCTL_SIGNER, value: "%[3]s.plexsphere.svc:8443"}
            - {name: SIGNERCTL_SIGNER_SPIFFE_ID, value: "spiffe://%[4]s/ns/plexsphere/sa/%[3]s"}
            - {name: SIGNERCTL_WORKLOAD_API_ADDR, value: "unix:///spiffe-workload-api/spire-agent.sock"}
            - {name: SIGNERCTL_OUTPUT, value: json}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: ["ALL"]}
          volumeMounts:
            - {name: spire, mountPath: /spiffe-workload-api, readOnly: true}
      volumes:
        - name: spire
          hostPath: {path: /run/spire/agent-sockets, type: Directory}
`, restart, a, release, kindTD)
}

var jobSeq int

// signerctlJob runs signerctl as a Kubernetes Job against a signer release
// and returns its output. backoff > 0 lets the Job retry a refused call
// (e.g. a commit before the pre-publication window has passed).
func signerctlJob(t *testing.T, release string, backoff int, args ...string) string {
	t.Helper()
	jobSeq++
	name := fmt.Sprintf("signerctl-%d-%d", time.Now().Unix(), jobSeq)
	apply(t, nsSigner, fmt.Sprintf(`apiVersion: batch/v1
kind: Job
metadata:
  name: %s
spec:
  backoffLimit: %d
  template:
    metadata:
      labels: %s
    spec:%s`, name, backoff, operatorLabels, operatorSpec(release, "Never", args...)))
	deadline := time.Now().Add(3 * time.Minute)
	for {
		st := kubectl(t, "-n", nsSigner, "get", "job", name, "-o", "jsonpath={.status.succeeded}/{.status.failed}")
		if strings.HasPrefix(st, "1/") {
			break
		}
		if strings.HasSuffix(st, fmt.Sprintf("/%d", backoff+1)) || time.Now().After(deadline) {
			logs, _ := kubectlE("-n", nsSigner, "logs", "job/"+name, "--all-containers")
			t.Fatalf("signerctl %v: job %s: %s\n%s", args, name, st, logs)
		}
		time.Sleep(time.Second)
	}
	// The pod that succeeded.
	pods := strings.Fields(kubectl(t, "-n", nsSigner, "get", "pods", "-l", "job-name="+name,
		"--field-selector=status.phase=Succeeded", "-o", "name"))
	if len(pods) == 0 {
		t.Fatalf("job %s succeeded without a pod", name)
	}
	out := kubectl(t, "-n", nsSigner, "logs", pods[0], "-c", "signerctl")
	kubectl(t, "-n", nsSigner, "delete", "job", name, "--wait=false")
	return out
}

// auditEntry is one line of `signerctl --output json audit tail`.
type auditEntry struct {
	Seq             uint64 `json:"seq"`
	Subject         string `json:"subject"`
	Relation        string `json:"relation"`
	Object          string `json:"object"`
	Reason          string `json:"reason"`
	Code            string `json:"code"`
	Method          string `json:"method"`
	SignatureSHA256 string `json:"signature_sha256"`
	Leaf            string `json:"leaf"` // the canonical encoding, base64
}

func parseAudit(t *testing.T, out string) map[uint64]auditEntry {
	t.Helper()
	m := map[uint64]auditEntry{}
	for _, doc := range jsonDocs(out) {
		var e auditEntry
		if err := json.Unmarshal([]byte(doc), &e); err != nil {
			t.Fatalf("audit entry %q: %v", doc, err)
		}
		m[e.Seq] = e
	}
	return m
}

// jsonDocs picks the JSON documents signerctl printed (indented: each opens
// with "{" or "[" alone on a line and closes likewise) out of a pod's log,
// which may also hold its error lines.
func jsonDocs(out string) []string {
	var docs []string
	var cur []string
	closing := ""
	for _, line := range strings.Split(out, "\n") {
		switch {
		case closing == "" && (line == "{" || line == "["):
			cur, closing = []string{line}, map[string]string{"{": "}", "[": "]"}[line]
		case closing != "":
			cur = append(cur, line)
			if line == closing {
				docs = append(docs, strings.Join(cur, "\n"))
				closing = ""
			}
		}
	}
	return docs
}

var auditOnce sync.Once

// grantedSigns returns every granted sign entry of the Postgres signers so
// far, as an operator pod following `signerctl audit tail --relation sign
// --reason granted` printed them (filtered, so that its log stays well
// under the kubelet's rotation size while the core signs 20 times a
// second). The pod runs for the whole suite; when it restarts (the replica
// it was connected to went away) it prints the log from the start again.
func grantedSigns(t *testing.T) map[uint64]auditEntry {
	t.Helper()
	auditOnce.Do(func() {
		spec := operatorSpec("signer", "Always", "audit", "tail", "--relation", "sign", "--reason", "granted",
			"--follow", "--limit", "5000", "--every", "500ms")
		apply(t, nsSigner, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: audit-reader\n  labels: "+operatorLabels+
			"\nspec:"+strings.ReplaceAll(spec, "\n    ", "\n"))
		kubectl(t, "-n", nsSigner, "wait", "--for=condition=Ready", "pod/audit-reader", "--timeout=120s")
	})
	var out string
	for _, prev := range []bool{true, false} { // the restarted container's predecessor too
		o, _ := kubectlE("-n", nsSigner, "logs", "audit-reader", "-c", "signerctl", fmt.Sprintf("--previous=%v", prev))
		out += o + "\n"
	}
	return parseAudit(t, out)
}

// The core signs and verifies through its sidecar on localhost (a Unix
// socket in the pod), with the identity SPIRE gave its ServiceAccount.
func TestKindCoreSignsThroughLocalhost(t *testing.T) {
	var pod string
	eventually(t, 3*time.Minute, func() string {
		pod = corePod(t, "core")
		if n, _ := tally(coreLog(t, nsCore, pod, "core"), time.Time{}, time.Now().Add(time.Hour)); n < 20 {
			return fmt.Sprintf("core has signed %d times", n)
		}
		return ""
	})
	args := kubectl(t, "-n", nsCore, "get", pod, "-o", "jsonpath={.spec.containers[0].args}")
	if !strings.Contains(args, "unix:///run/plexsphere/signer.sock") {
		t.Fatalf("core args %s", args)
	}
	lines := coreLog(t, nsCore, pod, "core")
	last := lines[len(lines)-1].at
	sigs, fails := tally(lines, last.Add(-10*time.Second), last.Add(time.Second))
	var keyID string
	for _, l := range lines {
		if l.keyID != "" {
			keyID = l.keyID
		}
	}
	figure(t, "core %s signed and verified %d times in its last 10 s through unix:///run/plexsphere/signer.sock (key %s), failures %v",
		pod, sigs, keyID, fails)
	if sigs == 0 {
		t.Fatal("no signature in the last 10 s")
	}
	// The schema is the migration Job's (run as the owner); the signers run
	// as the runtime role with migrations off.
	env := kubectl(t, "-n", nsSigner, "get", "deploy/signer", "-o", "jsonpath={.spec.template.spec.containers[0].env[?(@.name==\"SIGNER_POSTGRES_MIGRATE\")].value}")
	figure(t, "schema applied by the migration Job as the owner; the signers run as role signer with SIGNER_POSTGRES_MIGRATE=%s", env)
	if env != "false" {
		t.Fatalf("SIGNER_POSTGRES_MIGRATE=%q", env)
	}
}

const probePod = `apiVersion: v1
kind: Pod
metadata:
  name: %s
  labels: %s
spec:
  serviceAccountName: core
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    seccompProfile: {type: RuntimeDefault}
  containers:
    - name: probe
      image: plexsphere/e2e-probe:dev
      imagePullPolicy: Never
      args: ["--every", "1s", "--timeout", "2s", "signer-headless.plexsphere.svc:8443"]
      securityContext:
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: ["ALL"]}
`

// A pod without the injection label cannot open a TCP connection to any
// signer replica (the NetworkPolicy, enforced by kube-router here), while
// the same pod with the label can.
func TestKindUnlabelledPodCannotConnect(t *testing.T) {
	apply(t, nsCore, fmt.Sprintf(probePod, "probe-labelled", `{plexsphere.io/signer-client: "true"}`))
	apply(t, nsCore, fmt.Sprintf(probePod, "probe-unlabelled", `{e2e: probe}`))
	defer kubectlE("-n", nsCore, "delete", "pod", "probe-labelled", "probe-unlabelled", "--wait=false")
	count := func(pod string) (ok, failed int) {
		out, _ := kubectlE("-n", nsCore, "logs", pod)
		return strings.Count(out, "connect ok "), strings.Count(out, "connect failed ")
	}
	eventually(t, 3*time.Minute, func() string {
		ok, _ := count("probe-labelled")
		_, failed := count("probe-unlabelled")
		if ok < 6 || failed < 6 {
			return fmt.Sprintf("labelled pod: %d connections; unlabelled pod: %d failed attempts", ok, failed)
		}
		return ""
	})
	lok, lfail := count("probe-labelled")
	uok, ufail := count("probe-unlabelled")
	figure(t, "labelled pod: %d connections to signer replicas, %d failed; unlabelled pod: %d connections, %d failed (timeouts)", lok, lfail, uok, ufail)
	if uok != 0 {
		out, _ := kubectlE("-n", nsCore, "logs", "probe-unlabelled")
		t.Fatalf("the unlabelled pod reached the signer %d times:\n%s", uok, out)
	}
}

// An injected pod whose ServiceAccount is not on the allow-list reaches the
// signer and is denied; each denial is audited insufficient_relation with
// its SPIFFE ID.
func TestKindIntruderDeniedAndAudited(t *testing.T) {
	helm(t, "install", "-n", nsCore, "intruder", "../../charts/example-core", "-f", "kind/core-values.yaml",
		"--set", "serviceAccount=intruder", "--set", "every=1s")
	defer helm(t, "uninstall", "-n", nsCore, "intruder", "--wait")
	intruder := "spiffe://" + kindTD + "/ns/apps/sa/intruder"
	var denied map[uint64]auditEntry
	eventually(t, 3*time.Minute, func() string {
		denied = parseAudit(t, signerctlJob(t, "signer", 0, "audit", "tail", "--subject", "service:signer:peer="+intruder, "--limit", "1000"))
		if len(denied) < 3 {
			return fmt.Sprintf("%d audit entries for %s", len(denied), intruder)
		}
		return ""
	})
	reasons := map[string]int{}
	for _, e := range denied {
		reasons[e.Relation+"/"+e.Reason+"/"+e.Code]++
		if e.Reason == "granted" {
			t.Errorf("the intruder was granted: %+v", e)
		}
	}
	_, fails := tally(coreLog(t, nsCore, corePod(t, "intruder"), "core"), time.Time{}, time.Now().Add(time.Hour))
	figure(t, "%s: %d admission entries %v; its core's Sign failures by code %v", intruder, len(denied), reasons, fails)
	for code := range fails {
		if code != "PermissionDenied" {
			t.Errorf("intruder failures %v: want PermissionDenied only", fails)
		}
	}
}

// podState is a signer pod as the scenarios see it: a draining pod (its
// deletion requested, preStop running) still shows phase Running.
type podState struct {
	name            string
	deleting, ready bool
}

func signerPods(t *testing.T) []podState {
	t.Helper()
	out := kubectl(t, "-n", nsSigner, "get", "pods", "-l", "app.kubernetes.io/instance=signer", "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
	var ps []podState
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		p := podState{name: f[0], ready: f[len(f)-1] == "True"}
		p.deleting = len(f) == 3
		ps = append(ps, p)
	}
	return ps
}

// serving are the names of the ready signer pods not being deleted.
func serving(ps []podState) []string {
	var names []string
	for _, p := range ps {
		if p.ready && !p.deleting {
			names = append(names, p.name)
		}
	}
	sort.Strings(names)
	return names
}

// settled waits until exactly two signer pods exist, both serving (no
// replica of an earlier scenario still draining), and returns them.
func settled(t *testing.T) []string {
	t.Helper()
	var names []string
	eventually(t, 3*time.Minute, func() string {
		ps := signerPods(t)
		names = serving(ps)
		if len(ps) != 2 || len(names) != 2 {
			return fmt.Sprintf("signer pods %+v", ps)
		}
		return ""
	})
	return names
}

func contains(names []string, n string) bool {
	for _, m := range names {
		if m == n {
			return true
		}
	}
	return false
}

// A signer replica deleted while the core signs every 50 ms: the core keeps
// signing through the replica's drain and stop, its only failures are
// Unavailable, and every signature it got has exactly one granted audit row.
func TestKindSignerPodDeletedUnderLoad(t *testing.T) {
	before := settled(t)
	core := corePod(t, "core")
	deleted := time.Now()
	kubectl(t, "-n", nsSigner, "delete", "pod", before[0], "--wait=false")
	var ready, gone time.Duration
	eventually(t, 3*time.Minute, func() string {
		ps := signerPods(t)
		if ready == 0 {
			for _, n := range serving(ps) {
				if !contains(before, n) {
					ready = time.Since(deleted)
				}
			}
		}
		if gone == 0 {
			found := false
			for _, p := range ps {
				found = found || p.name == before[0]
			}
			if !found {
				gone = time.Since(deleted)
			}
		}
		if ready == 0 || gone == 0 {
			return fmt.Sprintf("replacement ready after %v, deleted pod gone after %v: %+v", ready, gone, ps)
		}
		if sigs, _ := tally(coreLog(t, nsCore, core, "core"), deleted.Add(gone), time.Now().Add(time.Hour)); sigs < 100 {
			return fmt.Sprintf("%d signatures since the deleted pod stopped", sigs)
		}
		return ""
	})
	lines := coreLog(t, nsCore, core, "core")
	sigs, fails := tally(lines, deleted, time.Now().Add(time.Hour))
	var all []string
	for _, l := range lines {
		if l.sig != "" {
			all = append(all, l.sig)
		}
	}
	var granted map[string]int
	eventually(t, 2*time.Minute, func() string {
		granted = map[string]int{}
		for _, e := range grantedSigns(t) {
			if e.Relation == "sign" && e.Reason == "granted" && e.SignatureSHA256 != "" {
				granted[e.SignatureSHA256]++
			}
		}
		missing := 0
		for _, s := range all {
			if granted[s] == 0 {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Sprintf("%d of %d signatures not in the audit log (yet)", missing, len(all))
		}
		return ""
	})
	var other int
	for _, s := range all {
		if granted[s] != 1 {
			other++
		}
	}
	figure(t, "deleted %s; replacement ready after %.1f s, the deleted pod drained and gone after %.1f s; since the deletion the core got %d signatures, failures %v; "+
		"all %d signatures of the run have exactly one granted audit row: %v (%d with another count)",
		before[0], ready.Seconds(), gone.Seconds(), sigs, fails, len(all), other == 0, other)
	if other != 0 {
		t.Errorf("%d signatures without exactly one granted audit row", other)
	}
	for code := range fails {
		if code != "Unavailable" {
			t.Errorf("failures %v: want Unavailable only", fails)
		}
	}
}

// `helm upgrade` rolls both signer replicas (a new pod before an old one
// stops, each old one draining before it stops) while the core signs every
// 50 ms: no Sign fails, from the upgrade until the last old pod is gone.
func TestKindHelmUpgradeRollsWithoutFailedSign(t *testing.T) {
	before := settled(t)
	core := corePod(t, "core")
	start := time.Now()
	helm(t, "upgrade", "-n", nsSigner, "signer", "../../charts/plexsphere-signer", "--reuse-values",
		"--set-string", "podAnnotations.e2e/rolled="+fmt.Sprint(start.Unix()), "--wait", "--timeout", "5m")
	var after []string
	eventually(t, 5*time.Minute, func() string {
		ps := signerPods(t)
		for _, p := range ps {
			if contains(before, p.name) {
				return fmt.Sprintf("old pod %s still there: %+v", p.name, ps)
			}
		}
		if after = serving(ps); len(after) != 2 {
			return fmt.Sprintf("signer pods %+v", ps)
		}
		return ""
	})
	took := time.Since(start)
	// Then 50 more signatures on the new replicas.
	rolled := time.Now()
	eventually(t, time.Minute, func() string {
		if n, _ := tally(coreLog(t, nsCore, core, "core"), rolled, rolled.Add(time.Hour)); n < 50 {
			return fmt.Sprintf("%d signatures since the roll", n)
		}
		return ""
	})
	sigs, fails := tally(coreLog(t, nsCore, core, "core"), start, time.Now())
	figure(t, "helm upgrade replaced %v by %v, the old ones drained and gone after %.1f s; the core got %d signatures meanwhile, failed Sign: %v",
		before, after, took.Seconds(), sigs, fails)
	if len(fails) != 0 {
		t.Errorf("failed Sign during the upgrade: %v", fails)
	}
	if sigs == 0 {
		t.Error("no signature during the upgrade")
	}
}

// A rotation run by an operator through signerctl Jobs: open a PENDING key,
// commit it once the pre-publication window has passed; the core moves to
// the new key without a failed Sign.
func TestKindRotationThroughSignerctlJob(t *testing.T) {
	core := corePod(t, "core")
	start := time.Now()
	var step struct {
		Key struct {
			KeyID string `json:"key_id"`
			State string `json:"state"`
		} `json:"key"`
	}
	out := signerctlJob(t, "signer", 0, "rotate", "open", "payments")
	docs := jsonDocs(out)
	if len(docs) != 1 || json.Unmarshal([]byte(docs[0]), &step) != nil || step.Key.KeyID == "" {
		t.Fatalf("rotate open printed %q", out)
	}
	opened := step.Key
	// Commit is refused until the 5 s pre-publication window has passed: the
	// Job retries (backoff) until it is accepted.
	signerctlJob(t, "signer", 6, "rotate", "commit", "payments", opened.KeyID)
	committed := time.Since(start)
	var first time.Time
	eventually(t, time.Minute, func() string {
		for _, l := range coreLog(t, nsCore, core, "core") {
			if l.keyID == opened.KeyID {
				first = l.at
				return ""
			}
		}
		return "the core has not signed with " + opened.KeyID
	})
	sigs, fails := tally(coreLog(t, nsCore, core, "core"), start, time.Now())
	figure(t, "opened %s (%s), committed after %.1f s, the core's first signature with it %.1f s after the open; %d signatures, failures %v during the rotation",
		opened.KeyID, opened.State, committed.Seconds(), first.Sub(start).Seconds(), sigs, fails)
	if len(fails) != 0 {
		t.Errorf("failed Sign during the rotation: %v", fails)
	}
}

// bbolt on a PersistentVolumeClaim: deleting the signer's pod keeps its keys
// and its audit log (the StatefulSet's replacement mounts the same claim).
func TestKindBboltSurvivesPodDeletion(t *testing.T) {
	helm(t, "install", "-n", nsSigner, "signer-bbolt", "../../charts/plexsphere-signer", "-f", "kind/signer-bbolt-values.yaml", "--wait", "--timeout", "5m")
	defer helm(t, "uninstall", "-n", nsSigner, "signer-bbolt", "--wait")
	pvc := kubectl(t, "-n", nsSigner, "get", "pvc", "data-signer-bbolt-0", "-o", "jsonpath={.spec.storageClassName} {.status.capacity.storage} {.status.phase}")
	keys := func() []string {
		var ks []struct {
			KeyID string `json:"key_id"`
			State string `json:"state"`
		}
		out := signerctlJob(t, "signer-bbolt", 0, "keys", "list")
		if docs := jsonDocs(out); len(docs) != 1 || json.Unmarshal([]byte(docs[0]), &ks) != nil {
			t.Fatalf("keys list printed %q", out)
		}
		var ids []string
		for _, k := range ks {
			ids = append(ids, k.KeyID+"/"+k.State)
		}
		sort.Strings(ids)
		return ids
	}
	audit := func() map[uint64]auditEntry {
		return parseAudit(t, signerctlJob(t, "signer-bbolt", 0, "audit", "tail", "--limit", "5000"))
	}
	keysBefore, auditBefore := keys(), audit()
	if len(keysBefore) == 0 || len(auditBefore) == 0 {
		t.Fatalf("before: keys %v, %d audit entries", keysBefore, len(auditBefore))
	}
	uid := kubectl(t, "-n", nsSigner, "get", "pod", "signer-bbolt-0", "-o", "jsonpath={.metadata.uid}")
	kubectl(t, "-n", nsSigner, "delete", "pod", "signer-bbolt-0")
	eventually(t, 3*time.Minute, func() string {
		out, _ := kubectlE("-n", nsSigner, "get", "pod", "signer-bbolt-0", "-o", "jsonpath={.metadata.uid} {.status.containerStatuses[0].ready}")
		if strings.HasPrefix(out, uid) || !strings.HasSuffix(out, "true") {
			return "no ready replacement of signer-bbolt-0 yet: " + out
		}
		return ""
	})
	keysAfter, auditAfter := keys(), audit()
	kept := 0
	for seq, e := range auditBefore {
		if a, ok := auditAfter[seq]; ok && a.Leaf != "" && a.Leaf == e.Leaf {
			kept++
		}
	}
	figure(t, "claim %s; before the deletion: keys %v, %d audit entries; after: keys %v, %d audit entries, %d of the earlier ones unchanged",
		pvc, keysBefore, len(auditBefore), keysAfter, len(auditAfter), kept)
	if strings.Join(keysBefore, ",") != strings.Join(keysAfter, ",") {
		t.Errorf("keys changed across the pod deletion: %v → %v", keysBefore, keysAfter)
	}
	if kept != len(auditBefore) {
		t.Errorf("%d of %d audit entries survived", kept, len(auditBefore))
	}
}
