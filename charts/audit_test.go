package charts

import (
	"crypto/rand"
	"fmt"
	"strings"
	"testing"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
	corev1 "k8s.io/api/core/v1"

	"github.com/plexsphere/signer/client/auditlog"
)

// anchorRefusal is the message the chart fails with when the audit log
// would have no anchor outside the store.
const anchorRefusal = "the audit log needs an anchor outside the store"

// set puts x at the dotted path in v, creating maps on the way.
func set(v map[string]any, path string, x any) {
	keys := strings.Split(path, ".")
	for _, k := range keys[:len(keys)-1] {
		next, ok := v[k].(map[string]any)
		if !ok {
			next = map[string]any{}
			v[k] = next
		}
		v = next
	}
	v[keys[len(keys)-1]] = x
}

// witnessKey is a fresh witness's tlog-cosignature/v1 verifier key, as a
// witness operator publishes it; its signer goes into testSigners.
func witnessKey(t *testing.T, name string) string {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		t.Fatal(err)
	}
	cosig, err := fnote.VKeyToCosignatureV1(vkey)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := fnote.NewSignerForCosignatureV1(skey)
	if err != nil {
		t.Fatal(err)
	}
	testSigners[name] = signer
	return cosig
}

// testSigners are the cosignature signers of the keys witnessKey made, by
// key name.
var testSigners = map[string]note.Signer{}

// withWitnesses is signerValues with two witnesses and no checkpoint file,
// their egress allowed.
func withWitnesses(t *testing.T, quorum any) map[string]any {
	t.Helper()
	v := values(t, signerValues)
	v["audit"] = map[string]any{
		"witnesses": []any{
			map[string]any{"name": "w1", "verifierKey": witnessKey(t, "w1.example"), "url": "https://w1.example"},
			map[string]any{"name": "w2", "verifierKey": witnessKey(t, "w2.example"), "url": "https://w2.example/tlog"},
		},
		"witnessQuorum": quorum,
	}
	set(v, "networkPolicy.witnesses", map[string]any{"cidrs": []any{"198.51.100.0/24"}, "ports": []any{443, 8443}})
	return v
}

func signerPod(t *testing.T, m manifests) (corev1.PodTemplateSpec, corev1.Container) {
	t.Helper()
	var tpl corev1.PodTemplateSpec
	switch {
	case len(m.deployments) == 1:
		tpl = m.deployments[0].Spec.Template
	case len(m.statefulSets) == 1:
		tpl = m.statefulSets[0].Spec.Template
	default:
		t.Fatalf("%d deployments, %d statefulsets", len(m.deployments), len(m.statefulSets))
	}
	return tpl, tpl.Spec.Containers[0]
}

func mountOf(c corev1.Container, name string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].Name == name {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

func volumeOf(pod corev1.PodSpec, name string) *corev1.Volume {
	for i := range pod.Volumes {
		if pod.Volumes[i].Name == name {
			return &pod.Volumes[i]
		}
	}
	return nil
}

// The chart's defaults refuse a signer whose audit log has no anchor
// outside the store, before any other check, naming the values to set.
func TestSignerChartRefusesALogWithoutAnchor(t *testing.T) {
	_, err := render(t, "plexsphere-signer", nil)
	if err == nil || !strings.Contains(err.Error(), anchorRefusal) ||
		!strings.Contains(err.Error(), "audit.witnesses") || !strings.Contains(err.Error(), "audit.checkpointFile.enabled=true") {
		t.Fatalf("default values: err = %v, want %q naming audit.witnesses and audit.checkpointFile.enabled", err, anchorRefusal)
	}

	v := values(t, signerValues)
	delete(v, "audit")
	if _, err := render(t, "plexsphere-signer", v); err == nil || !strings.Contains(err.Error(), anchorRefusal) {
		t.Errorf("complete values without an anchor: err = %v", err)
	}
	// A policy that asks for no cosignature anchors nothing.
	v["audit"] = map[string]any{"witnessPolicy": "quorum none\n"}
	if _, err := render(t, "plexsphere-signer", v); err == nil || !strings.Contains(err.Error(), anchorRefusal) {
		t.Errorf("\"quorum none\" alone: err = %v", err)
	}
	// Development: no anchor, said so.
	v["audit"] = map[string]any{"anchorRequired": false}
	m, err := render(t, "plexsphere-signer", v)
	if err != nil {
		t.Fatal(err)
	}
	_, c := signerPod(t, m)
	env := envOf(c)
	if env["SIGNER_AUDIT_ANCHOR_REQUIRED"] != "false" || env["SIGNER_CHECKPOINT_LOG"] != "" || env["SIGNER_WITNESS_POLICY_FILE"] != "" {
		t.Errorf("anchorRequired=false: env %v", env)
	}
}

// The witnesses become a policy in a ConfigMap that the signer reads from a
// read-only mount; what the chart renders parses as the signer parses it,
// with the quorum asked for; a changed policy rolls the pods.
func TestSignerChartWitnessPolicy(t *testing.T) {
	for _, tc := range []struct {
		quorum any
		// whether one, resp. both, cosignatures satisfy the quorum
		one, both bool
	}{
		{"all", false, true},
		{"any", true, true},
		{1, true, true},
		{2, false, true},
	} {
		t.Run(fmt.Sprint(tc.quorum), func(t *testing.T) {
			v := withWitnesses(t, tc.quorum)
			m, err := render(t, "plexsphere-signer", v)
			if err != nil {
				t.Fatal(err)
			}
			if len(m.configMaps) != 1 || m.configMaps[0].Name != "signer-witness-policy" {
				t.Fatalf("ConfigMaps %+v", m.configMaps)
			}
			text := m.configMaps[0].Data["policy"]
			policy, err := auditlog.ParseWitnessPolicy([]byte(text))
			if err != nil {
				t.Fatalf("the rendered policy does not parse: %v\n%s", err, text)
			}
			var got []string
			for _, w := range policy.Witnesses() {
				got = append(got, w.Name+" "+w.URL)
			}
			if want := "w1.example https://w1.example/add-checkpoint w2.example https://w2.example/tlog/add-checkpoint"; strings.Join(got, " ") != want || !policy.Required() {
				t.Errorf("policy witnesses %q (required %v), want %q\n%s", got, policy.Required(), want, text)
			}
			// The quorum, by what it accepts: one cosignature, both.
			one, both := cosigned(t, policy, 1), cosigned(t, policy, 2)
			if policy.Satisfied(one) != tc.one || policy.Satisfied(both) != tc.both {
				t.Errorf("quorum %v: one cosignature satisfies %v, two %v; want %v, %v\n%s", tc.quorum, policy.Satisfied(one), policy.Satisfied(both), tc.one, tc.both, text)
			}

			tpl, c := signerPod(t, m)
			env := envOf(c)
			if env["SIGNER_WITNESS_POLICY_FILE"] != "/etc/plexsphere/witnesses/policy" || env["SIGNER_WITNESS_TIMEOUT"] != "5s" {
				t.Errorf("env %v", env)
			}
			if _, ok := env["SIGNER_CHECKPOINT_LOG"]; ok {
				t.Error("SIGNER_CHECKPOINT_LOG set without audit.checkpointFile")
			}
			if vm := mountOf(c, "witness-policy"); vm == nil || !vm.ReadOnly || vm.MountPath != "/etc/plexsphere/witnesses" {
				t.Errorf("policy mount %+v", vm)
			}
			if vol := volumeOf(tpl.Spec, "witness-policy"); vol == nil || vol.ConfigMap == nil || vol.ConfigMap.Name != "signer-witness-policy" {
				t.Errorf("policy volume %+v", vol)
			}
			sum := tpl.Annotations["checksum/witness-policy"]
			if len(sum) != 64 {
				t.Fatalf("pod annotations %v: no checksum of the policy", tpl.Annotations)
			}
			// Another witness URL: another checksum, so the pods roll.
			v["audit"].(map[string]any)["witnesses"].([]any)[1].(map[string]any)["url"] = "https://w2.example/v2"
			if m, err = render(t, "plexsphere-signer", v); err != nil {
				t.Fatal(err)
			}
			if tpl, _ := signerPod(t, m); tpl.Annotations["checksum/witness-policy"] == sum {
				t.Error("a changed policy leaves the pod template unchanged")
			}

			// The signer may reach the witnesses and nothing more.
			var egress []string
			for _, e := range policyNamed(t, m, "signer").Spec.Egress {
				for _, to := range e.To {
					if to.IPBlock != nil && to.IPBlock.CIDR == "198.51.100.0/24" {
						for _, p := range e.Ports {
							egress = append(egress, p.Port.String())
						}
					}
				}
			}
			if fmt.Sprint(egress) != "[443 8443]" {
				t.Errorf("witness egress ports %v", egress)
			}
		})
	}
}

// cosigned is a checkpoint cosigned by the policy's first n witnesses.
func cosigned(t *testing.T, p *auditlog.WitnessPolicy, n int) []byte {
	t.Helper()
	var signers []note.Signer
	for _, w := range p.Witnesses()[:n] {
		signers = append(signers, testSigners[w.Name])
	}
	signed, err := note.Sign(&note.Note{Text: "example.org/plexsphere-signer\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"}, signers...)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// audit.witnessPolicy is the policy as given, for what witnesses and
// witnessQuorum cannot say (nested groups).
func TestSignerChartRawWitnessPolicy(t *testing.T) {
	text := fmt.Sprintf("witness a %s https://a.example\nwitness b %s https://b.example\nwitness c %s https://c.example\n"+
		"group ab any a b\ngroup both-sides all ab c\nquorum both-sides\n",
		witnessKey(t, "a.example"), witnessKey(t, "b.example"), witnessKey(t, "c.example"))
	v := values(t, signerValues)
	v["audit"] = map[string]any{"witnessPolicy": text}
	set(v, "networkPolicy.witnesses", map[string]any{"podLabels": map[string]any{"app": "witness"}, "namespace": "witnesses"})
	m, err := render(t, "plexsphere-signer", v)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.configMaps) != 1 || m.configMaps[0].Data["policy"] != text {
		t.Fatalf("ConfigMaps %+v, want the policy as given", m.configMaps)
	}
	if p, err := auditlog.ParseWitnessPolicy([]byte(m.configMaps[0].Data["policy"])); err != nil || len(p.Witnesses()) != 3 {
		t.Fatalf("policy: %v", err)
	}
	if env := envOf(m.deployments[0].Spec.Template.Spec.Containers[0]); env["SIGNER_WITNESS_POLICY_FILE"] == "" {
		t.Errorf("env %v", env)
	}
	// In-cluster witnesses by pod labels, on the default port.
	var found bool
	for _, e := range policyNamed(t, m, "signer").Spec.Egress {
		for _, to := range e.To {
			if to.PodSelector != nil && to.PodSelector.MatchLabels["app"] == "witness" &&
				to.NamespaceSelector.MatchLabels["kubernetes.io/metadata.name"] == "witnesses" && len(e.Ports) == 1 && e.Ports[0].Port.IntValue() == 443 {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("no egress to the witness pods: %+v", policyNamed(t, m, "signer").Spec.Egress)
	}
}

// bbolt: the checkpoint file on a claim of the StatefulSet's own, never on
// the data volume beside signer.db; or on a claim of the operator's.
func TestSignerChartCheckpointFileBbolt(t *testing.T) {
	v := values(t, signerValues)
	v["replicaCount"] = 1
	v["store"] = map[string]any{"type": "bbolt"}
	v["audit"] = map[string]any{"checkpointFile": map[string]any{"enabled": true, "init": true, "size": "256Mi", "storageClassName": "anchors"}}
	m, err := render(t, "plexsphere-signer", v)
	if err != nil {
		t.Fatal(err)
	}
	ss := m.statefulSets[0]
	var names []string
	for _, c := range ss.Spec.VolumeClaimTemplates {
		names = append(names, c.Name)
	}
	if fmt.Sprint(names) != "[data checkpoints]" || len(m.claims) != 0 {
		t.Fatalf("claim templates %v, %d chart claims", names, len(m.claims))
	}
	claim := ss.Spec.VolumeClaimTemplates[1]
	if claim.Spec.Resources.Requests.Storage().String() != "256Mi" || *claim.Spec.StorageClassName != "anchors" ||
		fmt.Sprint(claim.Spec.AccessModes) != "[ReadWriteOnce]" {
		t.Errorf("checkpoint claim %+v", claim.Spec)
	}
	tpl, c := signerPod(t, m)
	vm := mountOf(c, "checkpoints")
	env := envOf(c)
	if vm == nil || vm.ReadOnly || vm.MountPath != "/var/lib/plexsphere-anchor" || volumeOf(tpl.Spec, "checkpoints") != nil {
		t.Errorf("checkpoint mount %+v, pod volume %+v", vm, volumeOf(tpl.Spec, "checkpoints"))
	}
	// A file in the anchor's volume, not under the data mount.
	if env["SIGNER_CHECKPOINT_LOG"] != "/var/lib/plexsphere-anchor/checkpoints.jsonl" || env["SIGNER_CHECKPOINT_LOG_INIT"] != "true" ||
		strings.HasPrefix(env["SIGNER_CHECKPOINT_LOG"], mountOf(c, "data").MountPath+"/") {
		t.Errorf("env %v", env)
	}

	// existingClaim: that claim as a pod volume, no template.
	set(v, "audit.checkpointFile.existingClaim", "signer-anchor")
	if m, err = render(t, "plexsphere-signer", v); err != nil {
		t.Fatal(err)
	}
	tpl, _ = signerPod(t, m)
	if n := len(m.statefulSets[0].Spec.VolumeClaimTemplates); n != 1 {
		t.Errorf("%d claim templates with an existing claim", n)
	}
	if vol := volumeOf(tpl.Spec, "checkpoints"); vol == nil || vol.PersistentVolumeClaim == nil || vol.PersistentVolumeClaim.ClaimName != "signer-anchor" {
		t.Errorf("checkpoint volume %+v", vol)
	}
}

// postgres: one claim, mounted by every replica, SIGNER_CHECKPOINT_LOG the
// mounted directory (each replica writes <hostname>.jsonl in it and reads
// them all); ReadWriteMany unless said otherwise; kept by helm uninstall.
func TestSignerChartCheckpointFilePostgres(t *testing.T) {
	m, err := render(t, "plexsphere-signer", values(t, signerValues))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.claims) != 1 {
		t.Fatalf("%d claims", len(m.claims))
	}
	claim := m.claims[0]
	if claim.Name != "signer-checkpoints" || fmt.Sprint(claim.Spec.AccessModes) != "[ReadWriteMany]" || claim.Spec.StorageClassName != nil ||
		claim.Spec.Resources.Requests.Storage().String() != "1Gi" || claim.Annotations["helm.sh/resource-policy"] != "keep" {
		t.Errorf("claim %s %+v annotations %v", claim.Name, claim.Spec, claim.Annotations)
	}
	d := m.deployments[0]
	tpl, c := signerPod(t, m)
	if *d.Spec.Replicas != 2 {
		t.Fatalf("%d replicas", *d.Spec.Replicas)
	}
	vm := mountOf(c, "checkpoints")
	vol := volumeOf(tpl.Spec, "checkpoints")
	if vm == nil || vm.ReadOnly || vol == nil || vol.PersistentVolumeClaim == nil || vol.PersistentVolumeClaim.ClaimName != claim.Name {
		t.Fatalf("mount %+v, volume %+v", vm, vol)
	}
	if env := envOf(c); env["SIGNER_CHECKPOINT_LOG"] != vm.MountPath || env["SIGNER_CHECKPOINT_LOG_INIT"] != "false" {
		t.Errorf("SIGNER_CHECKPOINT_LOG=%q, want the mounted directory %s (env %v)", env["SIGNER_CHECKPOINT_LOG"], vm.MountPath, env)
	}
	// The migration Job never sees it.
	for _, j := range m.jobs {
		if volumeOf(j.Spec.Template.Spec, "checkpoints") != nil {
			t.Error("the migration Job mounts the checkpoint volume")
		}
	}

	v := values(t, signerValues)
	set(v, "audit.checkpointFile.accessModes", []any{"ReadWriteOnce"})
	set(v, "audit.checkpointFile.storageClassName", "nfs")
	if m, err = render(t, "plexsphere-signer", v); err != nil {
		t.Fatal(err)
	}
	if c := m.claims[0].Spec; fmt.Sprint(c.AccessModes) != "[ReadWriteOnce]" || *c.StorageClassName != "nfs" {
		t.Errorf("claim %+v", c)
	}
	set(v, "audit.checkpointFile.existingClaim", "shared-anchor")
	if m, err = render(t, "plexsphere-signer", v); err != nil {
		t.Fatal(err)
	}
	tpl, _ = signerPod(t, m)
	if vol := volumeOf(tpl.Spec, "checkpoints"); len(m.claims) != 0 || vol == nil || vol.PersistentVolumeClaim.ClaimName != "shared-anchor" {
		t.Errorf("existing claim: %d chart claims, volume %+v", len(m.claims), vol)
	}
}

// Each value reaches its variable, and nothing else sets it.
func TestSignerChartSettingValues(t *testing.T) {
	vkey := "example.org/plexsphere-signer+1a2b3c4d+AUbV6HbVh3WbZcKuyjk4x6bYtoFNgE0EJUe9GcOxTsOc"
	for _, tc := range []struct {
		set  map[string]any
		want string // NAME=value
	}{
		{map[string]any{"maxConnections": 10000}, "SIGNER_MAX_CONNECTIONS=10000"},
		{nil, "SIGNER_MAX_CONNECTIONS=4096"},
		{nil, "SIGNER_MAX_CONNECTIONS_PER_SOURCE=64"},
		{map[string]any{"maxConnectionsPerSource": 16}, "SIGNER_MAX_CONNECTIONS_PER_SOURCE=16"},
		{nil, "SIGNER_CONNECTION_TIMEOUT=5s"},
		{map[string]any{"connectionTimeout": "2s"}, "SIGNER_CONNECTION_TIMEOUT=2s"},
		{map[string]any{"goMemLimit": "200MiB"}, "GOMEMLIMIT=200MiB"},
		{map[string]any{"auditorAllowSpiffeIDs": []any{"spiffe://example.org/ns/audit/sa/a", "spiffe://example.org/ns/audit/sa/b"}},
			"SIGNER_AUDITOR_ALLOW_SPIFFE_IDS=spiffe://example.org/ns/audit/sa/a,spiffe://example.org/ns/audit/sa/b"},
		{map[string]any{"keyCacheTTL": "500ms"}, "SIGNER_KEY_CACHE_TTL=500ms"},
		{map[string]any{"audit.witnessTimeout": "3s"}, "SIGNER_WITNESS_TIMEOUT=3s"},
		{map[string]any{"audit.maxUnanchored": "5m"}, "SIGNER_AUDIT_MAX_UNANCHORED=5m"},
		{nil, "SIGNER_AUDIT_ANCHOR_REQUIRED=true"},
		{map[string]any{"audit.anchorRequired": false}, "SIGNER_AUDIT_ANCHOR_REQUIRED=false"},
		{map[string]any{"audit.origin": "payments.example/signer"}, "SIGNER_AUDIT_ORIGIN=payments.example/signer"},
		{map[string]any{"audit.checkpointVerifierKey": vkey}, "SIGNER_CHECKPOINT_VERIFIER_KEY=" + vkey},
		{nil, "SIGNER_AUDIT_EPOCH=1"},
		{map[string]any{"audit.epoch": 2, "audit.epochReason": "restored from the 2026-12-01 backup"}, "SIGNER_AUDIT_EPOCH=2"},
		{map[string]any{"audit.epoch": 2, "audit.epochReason": "restored from the 2026-12-01 backup"}, "SIGNER_AUDIT_EPOCH_REASON=restored from the 2026-12-01 backup"},
		{map[string]any{"audit.checkpointFile.init": true}, "SIGNER_CHECKPOINT_LOG_INIT=true"},
		{map[string]any{"extraEnv": []any{map[string]any{"name": "SIGNER_AUDIT_CHECKPOINT_INTERVAL", "value": "5s"}}}, "SIGNER_AUDIT_CHECKPOINT_INTERVAL=5s"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			v := values(t, signerValues)
			for k, x := range tc.set {
				set(v, k, x)
			}
			m, err := render(t, "plexsphere-signer", v)
			if err != nil {
				t.Fatal(err)
			}
			_, c := signerPod(t, m)
			name, value, _ := strings.Cut(tc.want, "=")
			n := 0
			for _, e := range c.Env {
				if e.Name == name {
					n++
				}
			}
			if got := envOf(c)[name]; got != value || n != 1 {
				t.Errorf("%s=%q (set %d times), want %q", name, got, n, value)
			}
		})
	}
	// Unset, these are left to the signer: GOMEMLIMIT from the container
	// limit, the origin from the trust domain, no pinned key, no reason.
	m, err := render(t, "plexsphere-signer", values(t, signerValues))
	if err != nil {
		t.Fatal(err)
	}
	_, c := signerPod(t, m)
	env := envOf(c)
	for _, name := range []string{"GOMEMLIMIT", "SIGNER_AUDIT_ORIGIN", "SIGNER_CHECKPOINT_VERIFIER_KEY", "SIGNER_AUDIT_EPOCH_REASON", "SIGNER_WITNESS_POLICY_FILE"} {
		if _, ok := env[name]; ok {
			t.Errorf("%s set by default", name)
		}
	}
}

func TestSignerChartAuditRefusals(t *testing.T) {
	key := func(name string) string { return witnessKey(t, name) }
	w := func(name, url string) map[string]any {
		return map[string]any{"name": name, "verifierKey": key(name + ".example"), "url": url}
	}
	egress := map[string]any{"cidrs": []any{"198.51.100.0/24"}}
	for _, tc := range []struct {
		name string
		set  map[string]any
		want string
	}{
		{"witnesses and a policy", map[string]any{"audit.witnesses": []any{w("w1", "https://w1.example")}, "audit.witnessPolicy": "quorum none\n", "networkPolicy.witnesses": egress},
			"not both"},
		{"two witnesses of one name", map[string]any{"audit.witnesses": []any{w("w1", "https://a.example"), w("w1", "https://b.example")}, "networkPolicy.witnesses": egress},
			"two witnesses named w1"},
		{"quorum above the witnesses", map[string]any{"audit.witnesses": []any{w("w1", "https://w1.example")}, "audit.witnessQuorum": 2, "networkPolicy.witnesses": egress},
			"can never be met"},
		{"quorum of none", map[string]any{"audit.witnesses": []any{w("w1", "https://w1.example")}, "audit.witnessQuorum": 0, "networkPolicy.witnesses": egress},
			"/audit/witnessQuorum"},
		{"quorum a word", map[string]any{"audit.witnesses": []any{w("w1", "https://w1.example")}, "audit.witnessQuorum": "most", "networkPolicy.witnesses": egress},
			"/audit/witnessQuorum"},
		{"witness key not a verifier key", map[string]any{"audit.witnesses": []any{map[string]any{"name": "w1", "verifierKey": "AAAA", "url": "https://w1.example"}}, "networkPolicy.witnesses": egress},
			"/audit/witnesses/0/verifierKey"},
		{"witness key with a short hash", map[string]any{"audit.witnesses": []any{map[string]any{"name": "w1", "verifierKey": "w1+abc+AQID", "url": "https://w1.example"}}, "networkPolicy.witnesses": egress},
			"/audit/witnesses/0/verifierKey"},
		{"witness URL not http", map[string]any{"audit.witnesses": []any{w("w1", "w1.example:443")}, "networkPolicy.witnesses": egress},
			"/audit/witnesses/0/url"},
		{"witness named like a keyword", map[string]any{"audit.witnesses": []any{w("quorum", "https://w1.example")}, "networkPolicy.witnesses": egress},
			"/audit/witnesses/0/name"},
		{"witness without a URL", map[string]any{"audit.witnesses": []any{map[string]any{"name": "w1", "verifierKey": key("w1.example")}}, "networkPolicy.witnesses": egress},
			"missing property 'url'"},
		{"policy without a quorum", map[string]any{"audit.witnessPolicy": "witness w1 " + key("w1.example") + " https://w1.example\n", "networkPolicy.witnesses": egress},
			"no quorum line"},
		{"witnesses the policy cannot reach", map[string]any{"audit.witnesses": []any{w("w1", "https://w1.example")}},
			"networkPolicy.witnesses.cidrs or networkPolicy.witnesses.podLabels is required"},
		{"a new epoch without a reason", map[string]any{"audit.epoch": 2}, "set audit.epochReason"},
		{"epoch 0", map[string]any{"audit.epoch": 0}, "/audit/epoch"},
		{"witness timeout not under the bound", map[string]any{"audit.witnessTimeout": "1m", "audit.maxUnanchored": "60s"}, "must be shorter than audit.maxUnanchored"},
		{"init without the file", map[string]any{"audit.checkpointFile": map[string]any{"enabled": false, "init": true}, "audit.witnesses": []any{w("w1", "https://w1.example")}, "networkPolicy.witnesses": egress},
			"init starts the checkpoint file"},
		{"pinned key of another shape", map[string]any{"audit.checkpointVerifierKey": "example.org/plexsphere-signer"}, "/audit/checkpointVerifierKey"},
		{"origin with a space", map[string]any{"audit.origin": "example.org signer"}, "/audit/origin"},
		{"read-only checkpoint claim", map[string]any{"audit.checkpointFile.accessModes": []any{"ReadOnlyMany"}}, "/audit/checkpointFile/accessModes"},
		{"checkpoint size not a quantity", map[string]any{"audit.checkpointFile.size": "big"}, "/audit/checkpointFile/size"},
		{"unknown audit value", map[string]any{"audit.checkpointFiles": true}, "additional properties"},
		{"auditor is the core", map[string]any{"auditorAllowSpiffeIDs": []any{coreID}}, "must not read the audit log"},
		{"maxConnections zero", map[string]any{"maxConnections": 0}, "/maxConnections"},
		{"maxConnectionsPerSource zero", map[string]any{"maxConnectionsPerSource": 0}, "/maxConnectionsPerSource"},
		{"connectionTimeout not a duration", map[string]any{"connectionTimeout": "5"}, "/connectionTimeout"},
		{"GOMEMLIMIT not a size", map[string]any{"goMemLimit": "200M"}, "/goMemLimit"},
		{"keyCacheTTL not a duration", map[string]any{"keyCacheTTL": "2"}, "/keyCacheTTL"},
		{"extraEnv sets a chart variable", map[string]any{"extraEnv": []any{map[string]any{"name": "SIGNER_CHECKPOINT_LOG", "value": "/tmp/x"}}},
			"extraEnv[0]: SIGNER_CHECKPOINT_LOG is the chart's to set: use audit.checkpointFile.enabled instead"},
		{"extraEnv sets GOMEMLIMIT", map[string]any{"extraEnv": []any{map[string]any{"name": "GOMEMLIMIT", "value": "1GiB"}}}, "GOMEMLIMIT is the chart's to set: use goMemLimit instead"},
		{"extraEnv sets a conditional chart variable", map[string]any{"extraEnv": []any{map[string]any{"name": "SIGNER_PKCS11_PIN_FILE", "value": "/pin"}}},
			"SIGNER_PKCS11_PIN_FILE is the chart's to set: use provider.pkcs11.pinSecret instead"},
		{"extraEnv passes a secret by value", map[string]any{"extraEnv": []any{map[string]any{"name": "SIGNER_POSTGRES_DSN", "value": "postgres://u:p@db/x"}}},
			"SIGNER_POSTGRES_DSN is the chart's to set: use store.postgres.dsnSecret (a secret by value would show in the pod spec) instead"},
		{"extraEnv loosens the allow-list", map[string]any{"extraEnv": []any{map[string]any{"name": "SIGNER_ALLOW_SPIFFE_IDS", "value": "spiffe://example.org/ns/apps/sa/intruder"}}},
			"extraEnv[0]: SIGNER_ALLOW_SPIFFE_IDS is the chart's to set: use allowSpiffeIDs instead (in extraEnv it would silently fight the chart's value)"},
		{"extraEnv loosens it through valueFrom", map[string]any{"extraEnv": []any{
			map[string]any{"name": "GODEBUG", "value": "x=1"},
			map[string]any{"name": "SIGNER_ROTATION_ALLOW_SPIFFE_IDS", "valueFrom": map[string]any{"configMapKeyRef": map[string]any{"name": "ids", "key": "ids"}}}}},
			"extraEnv[1]: SIGNER_ROTATION_ALLOW_SPIFFE_IDS is the chart's to set: use rotationAllowSpiffeIDs instead"},
		{"extraEnv with a misspelt setting", map[string]any{"extraEnv": []any{map[string]any{"name": "SIGNER_CHECKPOINT_INTERVAL", "value": "5s"}}},
			"extraEnv[0]: SIGNER_CHECKPOINT_INTERVAL is no setting of the signer, which would refuse to start on it; extraEnv may set SIGNER_IDENTITY_RELOAD, SIGNER_AUDIT_MAX_BATCH, SIGNER_AUDIT_CHECKPOINT_INTERVAL"},
		{"extraEnv twice", map[string]any{"extraEnv": []any{map[string]any{"name": "SIGNER_DENIAL_RATE", "value": "10"}, map[string]any{"name": "SIGNER_DENIAL_RATE", "value": "20"}}},
			"extraEnv[1]: SIGNER_DENIAL_RATE is set twice"},
		{"extraEnv with value and valueFrom", map[string]any{"extraEnv": []any{map[string]any{"name": "X", "value": "1", "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": "metadata.name"}}}}}, "/extraEnv/0"},
		{"extraEnv with neither", map[string]any{"extraEnv": []any{map[string]any{"name": "X"}}}, "/extraEnv/0"},
		{"extraEnv valueFrom of an unknown source", map[string]any{"extraEnv": []any{map[string]any{"name": "X", "valueFrom": map[string]any{"vaultRef": map[string]any{}}}}}, "/extraEnv/0/valueFrom"},
		{"extraEnv name not a variable", map[string]any{"extraEnv": []any{map[string]any{"name": "SIGNER-LOG", "value": "1"}}}, "/extraEnv/0/name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := values(t, signerValues)
			for k, x := range tc.set {
				set(v, k, x)
			}
			refused(t, "plexsphere-signer", v, tc.want)
		})
	}
}

// The anchor's alerts: the signer refusing for want of an anchor, the
// anchor's age past half of audit.maxUnanchored (rendered from the value),
// and witnesses answering error or fork.
func TestSignerChartAnchorAlerts(t *testing.T) {
	for _, tc := range []struct {
		maxUnanchored string
		threshold     string
	}{
		{"", "30"}, // the default, 1m
		{"10m", "300"},
		{"1m30s", "45"},
		{"1h", "1800"},
		{"90s", "45"},
	} {
		t.Run(tc.maxUnanchored, func(t *testing.T) {
			v := values(t, signerValues+monitoringValues)
			if tc.maxUnanchored != "" {
				set(v, "audit.maxUnanchored", tc.maxUnanchored)
			}
			m, err := render(t, "plexsphere-signer", v)
			if err != nil {
				t.Fatal(err)
			}
			rules := map[string]string{}
			severity := map[string]string{}
			for _, g := range m.rules[0].Spec.Groups {
				for _, r := range g.Rules {
					rules[r.Alert] = r.Expr
					severity[r.Alert] = r.Labels["severity"]
					if !strings.HasSuffix(r.Annotations["runbook_url"], "/docs/operations.md#alert-"+strings.ToLower(r.Alert)) {
						t.Errorf("%s runbook %q", r.Alert, r.Annotations["runbook_url"])
					}
				}
			}
			for alert, want := range map[string]string{
				"PlexsphereSignerAuditLogUnanchored": "plexsphere_signer_audit_log_unanchored == 1",
				"PlexsphereSignerAuditAnchorStale":   "time() - plexsphere_signer_audit_anchored_timestamp_seconds > " + tc.threshold,
				"PlexsphereSignerWitnessFailing":     `increase(plexsphere_signer_witness_requests_total{outcome=~"error|fork"}[5m]) > 0`,
			} {
				if rules[alert] != want {
					t.Errorf("%s: expr %q, want %q", alert, rules[alert], want)
				}
			}
			if severity["PlexsphereSignerAuditLogUnanchored"] != "critical" || severity["PlexsphereSignerAuditAnchorStale"] != "warning" ||
				!strings.Contains(severity["PlexsphereSignerWitnessFailing"], `eq $labels.outcome "fork"`) {
				t.Errorf("severities %v", severity)
			}
		})
	}
}
