package charts

import (
	"fmt"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// manifests are the rendered objects, decoded strictly by kind.
type manifests struct {
	deployments     []appsv1.Deployment
	statefulSets    []appsv1.StatefulSet
	jobs            []batchv1.Job
	services        []corev1.Service
	serviceAccounts []corev1.ServiceAccount
	policies        []networkingv1.NetworkPolicy
	pdbs            []policyv1.PodDisruptionBudget
	configMaps      []corev1.ConfigMap
	claims          []corev1.PersistentVolumeClaim
	rules           []prometheusRule
	serviceMonitors []serviceMonitor
}

// render installs the chart in dry-run, client-only mode and decodes every
// manifest; an unknown field anywhere is an error.
// refused fails t unless rendering dir with vals fails with an error
// containing want.
func refused(t *testing.T, dir string, vals map[string]any, want string) {
	t.Helper()
	if _, err := render(t, dir, vals); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

func render(t *testing.T, dir string, vals map[string]any) (manifests, error) {
	t.Helper()
	chrt, err := loader.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &action.Configuration{Log: func(string, ...any) {}}
	inst := action.NewInstall(cfg)
	inst.DryRun, inst.ClientOnly, inst.ReleaseName, inst.Namespace = true, true, "signer", "plexsphere"
	rel, err := inst.Run(chrt, vals)
	if err != nil {
		return manifests{}, err
	}
	var m manifests
	docs := strings.Split(rel.Manifest, "\n---")
	for _, h := range rel.Hooks { // the migration Job
		docs = append(docs, h.Manifest)
	}
	for _, doc := range docs {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var head struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("manifest: %v\n%s", err, doc)
		}
		strict := func(into any) {
			if err := yaml.UnmarshalStrict([]byte(doc), into); err != nil {
				t.Fatalf("%s does not decode strictly: %v\n%s", head.Kind, err, doc)
			}
		}
		switch head.Kind {
		case "Deployment":
			var d appsv1.Deployment
			strict(&d)
			m.deployments = append(m.deployments, d)
		case "StatefulSet":
			var d appsv1.StatefulSet
			strict(&d)
			m.statefulSets = append(m.statefulSets, d)
		case "Job":
			var j batchv1.Job
			strict(&j)
			m.jobs = append(m.jobs, j)
		case "Service":
			var s corev1.Service
			strict(&s)
			m.services = append(m.services, s)
		case "ServiceAccount":
			var s corev1.ServiceAccount
			strict(&s)
			m.serviceAccounts = append(m.serviceAccounts, s)
		case "NetworkPolicy":
			var p networkingv1.NetworkPolicy
			strict(&p)
			m.policies = append(m.policies, p)
		case "PodDisruptionBudget":
			var p policyv1.PodDisruptionBudget
			strict(&p)
			m.pdbs = append(m.pdbs, p)
		case "ConfigMap":
			var c corev1.ConfigMap
			strict(&c)
			m.configMaps = append(m.configMaps, c)
		case "PersistentVolumeClaim":
			var c corev1.PersistentVolumeClaim
			strict(&c)
			m.claims = append(m.claims, c)
		case "ServiceMonitor":
			var sm serviceMonitor
			strict(&sm)
			m.serviceMonitors = append(m.serviceMonitors, sm)
		case "PrometheusRule":
			var r prometheusRule
			strict(&r)
			m.rules = append(m.rules, r)
		default:
			t.Fatalf("unexpected kind %q", head.Kind)
		}
	}
	return m, nil
}

// values builds a values map from YAML.
func values(t *testing.T, y string) map[string]any {
	t.Helper()
	var v map[string]any
	if err := yaml.Unmarshal([]byte(y), &v); err != nil {
		t.Fatal(err)
	}
	return v
}

const coreID = "spiffe://example.org/ns/apps/sa/core"

const signerValues = `
allowSpiffeIDs: ["` + coreID + `"]
rotationAllowSpiffeIDs: ["spiffe://example.org/ns/ops/sa/operator"]
bootstrapScopes: [payments]
store:
  type: postgres
  postgres:
    dsnSecret: {name: signer-db, key: dsn}
    migration:
      mode: job
      ownerDsnSecret: {name: signer-db-owner, key: dsn}
      runtimeRole: signer
      pruneRole: signer_prune
provider:
  type: local
  local:
    kekSecret: {name: signer-kek, key: kek}
identity:
  mode: spiffe-csi
# The audit log's anchor outside the store (the chart refuses to render
# without one): the checkpoint file, which needs no other party.
audit:
  checkpointFile: {enabled: true}
networkPolicy:
  clientNamespaces: [apps]
  scrapeNamespaces: [monitoring]
  postgres:
    cidrs: [10.20.0.0/24]
  hsm:
    cidrs: [10.30.0.5/32]
    ports: [1792]
`

func envOf(c corev1.Container) map[string]string {
	m := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			m[e.Name] = "<from>"
			continue
		}
		m[e.Name] = e.Value
	}
	return m
}

func checkHardened(t *testing.T, name string, pod corev1.PodSpec, c corev1.Container) {
	t.Helper()
	ps := pod.SecurityContext
	if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.SeccompProfile == nil || ps.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod security context %+v", name, ps)
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0 {
		t.Errorf("%s: container %s security context %+v", name, c.Name, sc)
	}
}

func TestSignerChart(t *testing.T) {
	m, err := render(t, "plexsphere-signer", values(t, signerValues))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.deployments) != 1 || len(m.statefulSets) != 0 || len(m.serviceAccounts) != 1 || len(m.policies) != 2 || len(m.pdbs) != 1 || len(m.services) != 3 || len(m.jobs) != 1 {
		t.Fatalf("rendered %d deployments, %d statefulsets, %d SAs, %d policies, %d PDBs, %d services, %d jobs",
			len(m.deployments), len(m.statefulSets), len(m.serviceAccounts), len(m.policies), len(m.pdbs), len(m.services), len(m.jobs))
	}
	d, sa := m.deployments[0], m.serviceAccounts[0]
	pod := d.Spec.Template.Spec

	// A dedicated ServiceAccount with no API token anywhere.
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken || pod.ServiceAccountName != sa.Name ||
		pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("service account: %+v, pod uses %q automount %v", sa, pod.ServiceAccountName, pod.AutomountServiceAccountToken)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	checkHardened(t, "signer", pod, c)
	env := envOf(c)
	if env["SIGNER_ALLOW_SPIFFE_IDS"] != coreID || env["SIGNER_STORE"] != "postgres" ||
		env["SIGNER_WORKLOAD_API_ADDR"] != "unix:///spiffe-workload-api/spire-agent.sock" || env["SIGNER_POSTGRES_DSN_FILE"] == "" {
		t.Errorf("env %v", env)
	}
	if _, ok := env["SIGNER_POSTGRES_DSN"]; ok {
		t.Error("the DSN is passed by value; it must come from the mounted Secret file")
	}
	// Readiness is gRPC health (serving only once anchored); start-up and
	// liveness are /healthz, so a signer waiting for its anchor stays up,
	// not ready, instead of being restarted.
	if c.ReadinessProbe == nil || c.ReadinessProbe.GRPC == nil {
		t.Errorf("readiness must use gRPC health: %+v", c.ReadinessProbe)
	}
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
			t.Errorf("%s must be /healthz: %+v", name, p)
		}
	}
	if len(pod.TopologySpreadConstraints) == 0 || *d.Spec.Replicas < 2 {
		t.Errorf("replicas %d spread %v", *d.Spec.Replicas, pod.TopologySpreadConstraints)
	}

	var headless bool
	for _, s := range m.services {
		if s.Spec.ClusterIP == corev1.ClusterIPNone {
			headless = true
		}
	}
	if !headless {
		t.Error("no headless Service for client-side balancing")
	}
	// Two replicas: a budget that lets one go at a time; an upgrade starts a
	// new pod before stopping an old one.
	if p := m.pdbs[0].Spec; p.MinAvailable != nil || p.MaxUnavailable == nil || p.MaxUnavailable.IntValue() != 1 {
		t.Errorf("PDB %+v", p)
	}
	if ru := d.Spec.Strategy.RollingUpdate; ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 || ru.MaxSurge.IntValue() != 1 {
		t.Errorf("rolling update %+v", d.Spec.Strategy)
	}
	// A stopping replica keeps serving past the DNS cache TTL, then drains.
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Sleep.Seconds != 35 ||
		pod.TerminationGracePeriodSeconds == nil || *pod.TerminationGracePeriodSeconds != 35+20+10 || env["SIGNER_SHUTDOWN_TIMEOUT"] != "20s" {
		t.Errorf("shutdown: lifecycle %+v, grace %v, SIGNER_SHUTDOWN_TIMEOUT %q", c.Lifecycle, pod.TerminationGracePeriodSeconds, env["SIGNER_SHUTDOWN_TIMEOUT"])
	}
	// The runtime role never migrates.
	if env["SIGNER_POSTGRES_MIGRATE"] != "false" {
		t.Errorf("SIGNER_POSTGRES_MIGRATE=%q with a migration Job", env["SIGNER_POSTGRES_MIGRATE"])
	}

	// NetworkPolicy: default deny both ways; gRPC in only from labelled pods
	// in the allowed namespaces (one peer: both selectors must match).
	np := policyNamed(t, m, "signer").Spec
	if fmt.Sprint(np.PolicyTypes) != "[Ingress Egress]" {
		t.Errorf("policy types %v", np.PolicyTypes)
	}
	if len(np.Ingress) != 2 {
		t.Fatalf("%d ingress rules", len(np.Ingress))
	}
	grpcIn := np.Ingress[0]
	if len(grpcIn.From) != 1 || grpcIn.From[0].NamespaceSelector == nil || grpcIn.From[0].PodSelector == nil ||
		grpcIn.From[0].PodSelector.MatchLabels["plexsphere.io/signer-client"] != "true" ||
		fmt.Sprint(grpcIn.From[0].NamespaceSelector.MatchExpressions[0].Values) != "[apps]" ||
		len(grpcIn.Ports) != 1 || grpcIn.Ports[0].Port.String() != "grpc" {
		t.Errorf("gRPC ingress %+v", grpcIn)
	}
	if opsIn := np.Ingress[1]; len(opsIn.From) != 1 || opsIn.From[0].PodSelector != nil || opsIn.Ports[0].Port.String() != "ops" {
		t.Errorf("ops ingress %+v", opsIn)
	}
	var egress []string
	for _, e := range np.Egress {
		for _, p := range e.Ports {
			egress = append(egress, p.Port.String())
		}
		for _, to := range e.To {
			if to.IPBlock != nil {
				egress = append(egress, to.IPBlock.CIDR)
			}
		}
	}
	if got := strings.Join(egress, " "); got != "53 53 5432 10.20.0.0/24 1792 10.30.0.5/32" {
		t.Errorf("egress: %s", got)
	}
}

func policyNamed(t *testing.T, m manifests, name string) networkingv1.NetworkPolicy {
	t.Helper()
	for _, p := range m.policies {
		if p.Name == name {
			return p
		}
	}
	t.Fatalf("no NetworkPolicy %q", name)
	return networkingv1.NetworkPolicy{}
}

// The schema is applied by a Helm hook Job as the owner role, from a Secret
// the signer pods never mount; the pods run with SIGNER_POSTGRES_MIGRATE=false.
func TestSignerChartMigrationJob(t *testing.T) {
	m, err := render(t, "plexsphere-signer", values(t, signerValues))
	if err != nil {
		t.Fatal(err)
	}
	job := m.jobs[0]
	if job.Annotations["helm.sh/hook"] != "pre-install,pre-upgrade" {
		t.Errorf("job hook %q", job.Annotations["helm.sh/hook"])
	}
	pod := job.Spec.Template.Spec
	if pod.RestartPolicy != corev1.RestartPolicyNever || len(pod.Containers) != 1 {
		t.Fatalf("job pod %+v", pod)
	}
	c := pod.Containers[0]
	checkHardened(t, "migrate", pod, c)
	// The Secret's files are 0400 root: the non-root container reads them
	// through the pod's fsGroup (the first kind run with a Job failed here).
	if ps := pod.SecurityContext; ps.FSGroup == nil || ps.RunAsUser == nil || *ps.FSGroup != *ps.RunAsGroup {
		t.Errorf("migrate pod fsGroup %v, runAsGroup %v", ps.FSGroup, ps.RunAsGroup)
	}
	env := envOf(c)
	if fmt.Sprint(c.Args) != "[--migrate-only]" || env["SIGNER_POSTGRES_RUNTIME_ROLE"] != "signer" || env["SIGNER_POSTGRES_PRUNE_ROLE"] != "signer_prune" ||
		env["SIGNER_POSTGRES_OWNER_DSN_FILE"] != "/var/run/secrets/plexsphere/postgres-owner/dsn" {
		t.Errorf("migrate args %v env %v", c.Args, env)
	}
	if len(pod.Volumes) != 1 || pod.Volumes[0].Secret == nil || pod.Volumes[0].Secret.SecretName != "signer-db-owner" {
		t.Errorf("job volumes %+v", pod.Volumes)
	}
	// The owner's Secret is nowhere in the signer pods.
	for _, v := range m.deployments[0].Spec.Template.Spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "signer-db-owner" {
			t.Errorf("the signer pods mount the owner's Secret as %s", v.Name)
		}
	}
	// Its own policy: DNS and Postgres out, nothing in.
	np := policyNamed(t, m, "signer-migrate").Spec
	if len(np.Ingress) != 0 || len(np.Egress) != 2 || np.PodSelector.MatchLabels["app.kubernetes.io/name"] != job.Spec.Template.Labels["app.kubernetes.io/name"] {
		t.Errorf("migration policy %+v", np)
	}

	// self: the pods migrate (throwaway databases), no Job.
	v := values(t, signerValues)
	v["store"].(map[string]any)["postgres"].(map[string]any)["migration"] = map[string]any{"mode": "self"}
	m, err = render(t, "plexsphere-signer", v)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.jobs) != 0 || envOf(m.deployments[0].Spec.Template.Spec.Containers[0])["SIGNER_POSTGRES_MIGRATE"] != "true" {
		t.Errorf("self migration: %d jobs, env %v", len(m.jobs), envOf(m.deployments[0].Spec.Template.Spec.Containers[0]))
	}
}

// bbolt: a StatefulSet of one whose file lives on a PersistentVolumeClaim of
// the configured size; no PodDisruptionBudget (it would block every drain).
func TestSignerChartBboltOnAVolume(t *testing.T) {
	v := values(t, signerValues)
	v["replicaCount"] = 1
	v["store"] = map[string]any{"type": "bbolt", "bbolt": map[string]any{"size": "3Gi", "storageClassName": "standard"}}
	m, err := render(t, "plexsphere-signer", v)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.deployments) != 0 || len(m.statefulSets) != 1 || len(m.pdbs) != 0 || len(m.jobs) != 0 {
		t.Fatalf("bbolt: %d deployments, %d statefulsets, %d PDBs, %d jobs", len(m.deployments), len(m.statefulSets), len(m.pdbs), len(m.jobs))
	}
	ss := m.statefulSets[0]
	// Two claims: the store's, then the checkpoint file's (audit_test.go).
	if *ss.Spec.Replicas != 1 || len(ss.Spec.VolumeClaimTemplates) != 2 {
		t.Fatalf("statefulset %+v", ss.Spec)
	}
	pvc := ss.Spec.VolumeClaimTemplates[0]
	if pvc.Name != "data" || pvc.Spec.Resources.Requests.Storage().String() != "3Gi" || *pvc.Spec.StorageClassName != "standard" ||
		fmt.Sprint(pvc.Spec.AccessModes) != "[ReadWriteOnce]" {
		t.Errorf("claim %+v", pvc)
	}
	pod := ss.Spec.Template.Spec
	for _, vol := range pod.Volumes {
		if vol.Name == "data" {
			t.Errorf("the data volume is a pod volume (%+v), not the claim", vol.VolumeSource)
		}
	}
	c := pod.Containers[0]
	var mounted bool
	for _, vm := range c.VolumeMounts {
		mounted = mounted || (vm.Name == "data" && vm.MountPath == "/var/lib/plexsphere")
	}
	if env := envOf(c); !mounted || env["SIGNER_BBOLT_PATH"] != "/var/lib/plexsphere/signer.db" {
		t.Errorf("bbolt mount %v, env %v", c.VolumeMounts, env)
	}
	// And postgres with one replica: no budget either.
	v = values(t, signerValues)
	v["replicaCount"] = 1
	if m, err = render(t, "plexsphere-signer", v); err != nil || len(m.pdbs) != 0 {
		t.Errorf("postgres, one replica: %d PDBs (err %v)", len(m.pdbs), err)
	}
}

// The identity modes: a Workload API socket by CSI or by hostPath (SPIRE's
// agent socket directory), SVID files by cert-manager's CSI driver or from a
// Secret.
func TestSignerChartIdentityModes(t *testing.T) {
	for _, tc := range []struct {
		mode, extra, env string
		volume           func(corev1.VolumeSource) bool
	}{
		{"spiffe-csi", "", "SIGNER_WORKLOAD_API_ADDR=unix:///spiffe-workload-api/spire-agent.sock",
			func(v corev1.VolumeSource) bool { return v.CSI != nil && v.CSI.Driver == "csi.spiffe.io" }},
		{"hostpath", "", "SIGNER_WORKLOAD_API_ADDR=unix:///spiffe-workload-api/spire-agent.sock",
			func(v corev1.VolumeSource) bool {
				return v.HostPath != nil && v.HostPath.Path == "/run/spire/agent-sockets" && *v.HostPath.Type == corev1.HostPathDirectory
			}},
		{"cert-manager", "", "SIGNER_SVID_CERT_FILE=/var/run/secrets/spiffe.io/tls.crt",
			func(v corev1.VolumeSource) bool { return v.CSI != nil && v.CSI.Driver == "spiffe.csi.cert-manager.io" }},
		{"files", "signer-svid", "SIGNER_TRUST_BUNDLE_FILE=/var/run/secrets/spiffe.io/ca.crt",
			func(v corev1.VolumeSource) bool { return v.Secret != nil && v.Secret.SecretName == "signer-svid" }},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			v := values(t, signerValues)
			id := map[string]any{"mode": tc.mode}
			if tc.extra != "" {
				id["files"] = map[string]any{"secretName": tc.extra}
			}
			v["identity"] = id
			m, err := render(t, "plexsphere-signer", v)
			if err != nil {
				t.Fatal(err)
			}
			pod := m.deployments[0].Spec.Template.Spec
			name, value, _ := strings.Cut(tc.env, "=")
			if got := envOf(pod.Containers[0])[name]; got != value {
				t.Errorf("%s=%q, want %q", name, got, value)
			}
			var found bool
			for _, vol := range pod.Volumes {
				found = found || (vol.Name == "spiffe-identity" && tc.volume(vol.VolumeSource))
			}
			if !found {
				t.Errorf("identity volume: %+v", pod.Volumes)
			}
		})
	}
}

func TestSignerChartRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, extra, want string
	}{
		{"bbolt with replicas", "replicaCount: 2\nstore: {type: bbolt}", "bbolt serves one replica"},
		{"postgres without a DSN secret", "store: {type: postgres, postgres: {dsnSecret: {name: '', key: dsn}}}", "dsnSecret.name is required"},
		{"bad SPIFFE ID", "allowSpiffeIDs: [core]", "allowSpiffeIDs"},
		{"core may not rotate", "rotationAllowSpiffeIDs: [\"" + coreID + "\"]", "must never rotate"},
		{"unknown value", "replicas: 3", "additional properties"},
		{"migration job without an owner secret", "store: {type: postgres, postgres: {dsnSecret: {name: db, key: dsn}, migration: {mode: job, runtimeRole: signer}}}", "ownerDsnSecret.name is required"},
		{"owner secret is the runtime secret", "store: {type: postgres, postgres: {dsnSecret: {name: db, key: dsn}, migration: {mode: job, runtimeRole: signer, ownerDsnSecret: {name: db, key: dsn}}}}", "must be another Secret"},
		{"migration job without a runtime role", "store: {type: postgres, postgres: {dsnSecret: {name: db, key: dsn}, migration: {mode: job, ownerDsnSecret: {name: owner, key: dsn}}}}", "runtimeRole is required"},
		{"prune role is the runtime role", "store: {type: postgres, postgres: {dsnSecret: {name: db, key: dsn}, migration: {mode: job, runtimeRole: signer, pruneRole: signer, ownerDsnSecret: {name: owner, key: dsn}}}}", "pruneRole must be another role"},
		{"bbolt size not a quantity", "replicaCount: 1\nstore: {type: bbolt, bbolt: {size: lots}}", "size"},
		{"files identity without a secret", "identity: {mode: files}", "identity.files.secretName is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := values(t, signerValues)
			for k, x := range values(t, tc.extra) {
				v[k] = x
			}
			refused(t, "plexsphere-signer", v, tc.want)
		})
	}
}

const coreValues = `
sidecar:
  signerSpiffeID: spiffe://example.org/ns/plexsphere/sa/plexsphere-signer
`

func TestExampleCoreChartNativeSidecar(t *testing.T) {
	m, err := render(t, "example-core", values(t, coreValues))
	if err != nil {
		t.Fatal(err)
	}
	pod := m.deployments[0].Spec.Template.Spec
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the core pod mounts an API token")
	}
	if m.deployments[0].Spec.Template.Labels["plexsphere.io/signer-client"] != "true" {
		t.Error("pod lacks the label the signer's NetworkPolicy admits")
	}
	if len(pod.InitContainers) != 1 || len(pod.Containers) != 1 {
		t.Fatalf("%d init containers, %d containers", len(pod.InitContainers), len(pod.Containers))
	}
	sc, core := pod.InitContainers[0], pod.Containers[0]
	if sc.Name != "plexsphere-sidecar" || sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("sidecar is not a native sidecar: %+v", sc.RestartPolicy)
	}
	if p := sc.StartupProbe; p == nil || p.GRPC == nil || p.GRPC.Service == nil || *p.GRPC.Service != "plexsphere.sidecar" {
		t.Errorf("sidecar startup probe %+v: it must pass only once the upstream handshake works", p)
	}
	checkHardened(t, "sidecar", pod, sc)
	checkHardened(t, "core", pod, core)
	// The core gets the socket, nothing else of the sidecar's.
	for _, vm := range core.VolumeMounts {
		if vm.Name != "plexsphere-socket" {
			t.Errorf("core mounts %s", vm.Name)
		}
	}
	for name := range envOf(core) {
		if strings.HasPrefix(name, "SIDECAR_") || strings.HasPrefix(name, "SIGNER_") {
			t.Errorf("core receives %s", name)
		}
	}
	if a := strings.Join(core.Args, " "); !strings.Contains(a, "--signer unix:///run/plexsphere/signer.sock") || !strings.Contains(a, "--wait 30s") {
		t.Errorf("core args %v", core.Args)
	}
	var identity bool
	for _, vm := range sc.VolumeMounts {
		identity = identity || vm.Name == "plexsphere-identity"
	}
	if !identity {
		t.Error("the sidecar has no identity volume")
	}
	env := envOf(sc)
	if env["SIDECAR_ALLOW_UIDS"] != "65532" || !strings.HasPrefix(env["SIDECAR_LISTEN"], "unix://") {
		t.Errorf("sidecar env %v", env)
	}
	if _, set := env["SIDECAR_RELAY"]; set || env["SIDECAR_MAX_CONNECTIONS"] != "128" || env["SIDECAR_MAX_CONCURRENT_STREAMS"] != "1024" {
		t.Errorf("sidecar mode and caps: %v", env)
	}
	// Distinct uids: the core's (the pod's) is the one on the allow-list, the
	// sidecar runs as another, in the core's group (the socket is 0660).
	if pod.SecurityContext.RunAsUser == nil || *pod.SecurityContext.RunAsUser != 65532 {
		t.Errorf("core uid %v", pod.SecurityContext.RunAsUser)
	}
	if s := sc.SecurityContext; s.RunAsUser == nil || *s.RunAsUser != 65533 || s.RunAsGroup == nil || *s.RunAsGroup != *pod.SecurityContext.RunAsGroup {
		t.Errorf("sidecar uid %v gid %v", s.RunAsUser, s.RunAsGroup)
	}
	// The sidecar carries its own seccomp profile, whatever the pod sets.
	if s := sc.SecurityContext; s.SeccompProfile == nil || s.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("sidecar seccomp %+v", s.SeccompProfile)
	}
	if pod.ShareProcessNamespace == nil || *pod.ShareProcessNamespace {
		t.Errorf("shareProcessNamespace %v", pod.ShareProcessNamespace)
	}
	if len(m.policies) != 0 {
		t.Errorf("%d NetworkPolicies rendered by default", len(m.policies))
	}
}

// The caps are values of the sidecar block.
func TestExampleCoreChartSidecarCaps(t *testing.T) {
	v := values(t, coreValues)
	sc := v["sidecar"].(map[string]any)
	sc["maxConnections"], sc["maxConcurrentStreams"] = 16, 64
	m, err := render(t, "example-core", v)
	if err != nil {
		t.Fatal(err)
	}
	env := envOf(m.deployments[0].Spec.Template.Spec.InitContainers[0])
	if env["SIDECAR_MAX_CONNECTIONS"] != "16" || env["SIDECAR_MAX_CONCURRENT_STREAMS"] != "64" {
		t.Fatalf("sidecar env %v", env)
	}
}

// A values file from before the relay was folded into the one path fails
// the render, naming the value, instead of being ignored.
func TestExampleCoreChartRefusesTheOldRelayValue(t *testing.T) {
	v := values(t, coreValues)
	v["sidecar"].(map[string]any)["relay"] = true
	if _, err := render(t, "example-core", v); err == nil || !strings.Contains(err.Error(), "sidecar.relay is gone") {
		t.Fatalf("render with sidecar.relay: %v", err)
	}
}

// The optional policy for core pods: the sidecar's ops port only from the
// scrape namespaces, every other port of the pod as open as before.
func TestExampleCoreChartOpsPolicy(t *testing.T) {
	v := values(t, coreValues)
	v["sidecar"].(map[string]any)["networkPolicy"] = map[string]any{"enabled": true, "scrapeNamespaces": []any{"monitoring"}}
	m, err := render(t, "example-core", v)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.policies) != 1 {
		t.Fatalf("%d policies", len(m.policies))
	}
	np := m.policies[0].Spec
	if np.PodSelector.MatchLabels["app.kubernetes.io/name"] != "example-core" || fmt.Sprint(np.PolicyTypes) != "[Ingress]" || len(np.Ingress) != 2 {
		t.Fatalf("policy %+v", np)
	}
	var open []string
	for _, p := range np.Ingress[0].Ports {
		open = append(open, fmt.Sprintf("%s:%s-%d", *p.Protocol, p.Port, *p.EndPort))
	}
	if got := strings.Join(open, " "); len(np.Ingress[0].From) != 0 || got != "TCP:1-9090 TCP:9092-65535 UDP:1-65535 SCTP:1-65535" {
		t.Errorf("open ports %s from %v", got, np.Ingress[0].From)
	}
	ops := np.Ingress[1]
	if len(ops.From) != 1 || fmt.Sprint(ops.From[0].NamespaceSelector.MatchExpressions[0].Values) != "[monitoring]" ||
		len(ops.Ports) != 1 || ops.Ports[0].Port.IntValue() != 9091 {
		t.Errorf("ops rule %+v", ops)
	}
}

// Identity by hostPath (the SPIRE agent's socket directory) and from a Secret.
func TestExampleCoreChartIdentityModes(t *testing.T) {
	for _, tc := range []struct{ mode, env string }{
		{"hostpath", "SIDECAR_WORKLOAD_API_ADDR=unix:///spiffe-workload-api/spire-agent.sock"},
		{"files", "SIDECAR_SVID_KEY_FILE=/var/run/secrets/spiffe.io/tls.key"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			v := values(t, coreValues)
			v["sidecar"].(map[string]any)["identity"] = map[string]any{"mode": tc.mode, "files": map[string]any{"secretName": "core-svid"}}
			m, err := render(t, "example-core", v)
			if err != nil {
				t.Fatal(err)
			}
			pod := m.deployments[0].Spec.Template.Spec
			name, value, _ := strings.Cut(tc.env, "=")
			if got := envOf(pod.InitContainers[0])[name]; got != value {
				t.Errorf("%s=%q, want %q", name, got, value)
			}
			for _, vol := range pod.Volumes {
				if vol.Name != "plexsphere-identity" {
					continue
				}
				if (tc.mode == "hostpath") != (vol.HostPath != nil && vol.HostPath.Path == "/run/spire/agent-sockets") ||
					(tc.mode == "files") != (vol.Secret != nil && vol.Secret.SecretName == "core-svid") {
					t.Errorf("identity volume %+v", vol.VolumeSource)
				}
			}
		})
	}
}

func TestExampleCoreChartClassicFallback(t *testing.T) {
	v := values(t, coreValues)
	v["sidecar"].(map[string]any)["mode"] = "classic"
	m, err := render(t, "example-core", v)
	if err != nil {
		t.Fatal(err)
	}
	pod := m.deployments[0].Spec.Template.Spec
	if len(pod.InitContainers) != 0 || len(pod.Containers) != 2 || pod.Containers[1].Name != "plexsphere-sidecar" || pod.Containers[1].RestartPolicy != nil {
		t.Fatalf("classic mode: init %d, containers %d", len(pod.InitContainers), len(pod.Containers))
	}
}

func TestExampleCoreChartRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, extra, want string
	}{
		{"signer SPIFFE ID unset", "sidecar: {signerSpiffeID: ''}", "sidecar.signerSpiffeID is required"},
		{"core mounts the identity", "extraVolumeMounts: [{name: plexsphere-identity, mountPath: /id}]", "must not mount plexsphere-identity"},
		{"core gets the SVID path", "extraEnv: [{name: SIDECAR_SVID_KEY_FILE, value: /id/key}]", "must not receive SIDECAR_SVID_KEY_FILE"},
		{"core gets a Workload API address", "extraEnv: [{name: SPIFFE_ENDPOINT_SOCKET, value: unix:///id/agent.sock}]", "must not receive SPIFFE_ENDPOINT_SOCKET"},
		{"shared process namespace", "shareProcessNamespace: true", "shareProcessNamespace is refused"},
		{"identity CSI driver under another name",
			"extraVolumes: [{name: certs, csi: {driver: csi.spiffe.io, readOnly: true}}]\nextraVolumeMounts: [{name: certs, mountPath: /id}]",
			"must not mount certs"},
		{"cert-manager CSI driver under another name",
			"extraVolumes: [{name: x, csi: {driver: spiffe.csi.cert-manager.io, readOnly: true}}]\nextraVolumeMounts: [{name: x, mountPath: /id}]",
			"must not mount x"},
		{"a volume named like the sidecar's socket",
			"extraVolumes: [{name: plexsphere-socket, hostPath: {path: /run/spire/agent-sockets}}]",
			`extraVolumes[0] is named "plexsphere-socket", a name of the sidecar's volumes; rename it`},
		{"a volume named like the sidecar's identity",
			"extraVolumes: [{name: plexsphere-identity, emptyDir: {}}]",
			`extraVolumes[0] is named "plexsphere-identity", a name of the sidecar's volumes; rename it`},
		{"the SVID Secret under another name",
			"sidecar: {identity: {mode: files, files: {secretName: core-svid}}}\nextraVolumes: [{name: s, secret: {secretName: core-svid}}]\nextraVolumeMounts: [{name: s, mountPath: /s}]",
			"must not mount s"},
		{"sidecar uid on the allow-list", "sidecar: {allowUIDs: [65532, 65533]}", "sidecar.runAsUser 65533 is on sidecar.allowUIDs"},
		{"empty allow-list", "sidecar: {allowUIDs: []}", "sidecar.allowUIDs is empty"},
		{"core uid not on the allow-list", "runAsUser: 1000", "runAsUser 1000 is not on sidecar.allowUIDs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, "example-core", withExtra(t, tc.extra))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// withExtra merges YAML into the example core's values; a sidecar block is
// merged key by key into the default one.
func withExtra(t *testing.T, extra string) map[string]any {
	t.Helper()
	v := values(t, coreValues)
	for k, x := range values(t, extra) {
		if sub, ok := x.(map[string]any); ok && k == "sidecar" {
			for sk, sv := range sub {
				v["sidecar"].(map[string]any)[sk] = sv
			}
			continue
		}
		v[k] = x
	}
	return v
}

// No core container mounts a hostPath, however it is spelt: path strings
// cannot be compared (/var/run is /run, "//", "." and ".." change nothing
// for the kernel), and a host directory can hold the SPIRE agent socket
// (hostpath mode), the socket directory the SPIFFE CSI driver serves, or
// the kubelet's pod volumes with every pod's CSI mounts and Secrets. A core
// that reached the agent socket could fetch the pod's SVID: the sidecar's
// identity. Each case is refused with the volume's value and the fix named.
func TestExampleCoreChartRefusesHostPathMounts(t *testing.T) {
	for _, tc := range []struct{ name, path, mount string }{
		{"the agent socket directory through /var/run", "/var/run/spire/agent-sockets", ""},
		{"its parent through /var/run", "/var/run/spire", ""},
		{"a doubled slash", "/run//spire/agent-sockets", ""},
		{"a dot", "/run/./spire", ""},
		{"a trailing slash", "/run/spire/agent-sockets/", ""},
		{"a dot-dot that comes back", "/run/spire/../spire", ""},
		{"a leading doubled slash", "//run/spire", ""},
		{"/var/run with a trailing slash", "/var/run/", ""},
		{"the agent socket itself", "/run/spire/agent-sockets/spire-agent.sock", ""},
		{"the root", "/", ""},
		{"/run", "/run", ""},
		{"/var", "/var", ""},
		{"/run through a subPath", "/run", "subPath: spire/agent-sockets"},
		{"the kubelet's pod volumes (CSI mounts, Secrets)", "/var/lib/kubelet/pods", ""},
		{"the container runtime's socket", "/run/containerd", ""},
		{"a directory that looks harmless", "/opt/core-data", ""},
		{"an empty path", "", ""},
		{"no path at all", "-", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mount := "{name: host, mountPath: /host}"
			if tc.mount != "" {
				mount = "{name: host, mountPath: /host, " + tc.mount + "}"
			}
			hostPath := fmt.Sprintf("{path: %q}", tc.path)
			if tc.path == "-" {
				hostPath, tc.path = "{}", ""
			}
			v := withExtra(t, fmt.Sprintf("extraVolumes: [{name: cache, emptyDir: {}}, {name: host, hostPath: %s}]\nextraVolumeMounts: [%s]", hostPath, mount))
			_, err := render(t, "example-core", v)
			if err == nil {
				t.Fatalf("hostPath %q mounted by the core rendered", tc.path)
			}
			// One line that names the value and the fix.
			msg := err.Error()
			for _, want := range []string{
				fmt.Sprintf(`container core must not mount host: extraVolumes[1] is hostPath %q`, tc.path),
				"use an emptyDir, configMap, secret or persistentVolumeClaim instead",
			} {
				if !strings.Contains(msg, want) {
					t.Errorf("err = %v\nwant it to contain %q", err, want)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("err spans lines: %q", msg)
			}
		})
	}
}

// The core keeps every volume that is not a host directory.
func TestExampleCoreChartExtraVolumes(t *testing.T) {
	v := withExtra(t, `
extraVolumes:
  - {name: cache, emptyDir: {}}
  - {name: config, configMap: {name: core-config}}
  - {name: data, persistentVolumeClaim: {claimName: core-data}}
  - {name: unused-host, hostPath: {path: /opt/core-data}}
extraVolumeMounts:
  - {name: cache, mountPath: /cache}
  - {name: config, mountPath: /etc/core, readOnly: true}
  - {name: data, mountPath: /data}
`)
	m, err := render(t, "example-core", v)
	if err != nil {
		t.Fatal(err)
	}
	pod := m.deployments[0].Spec.Template.Spec
	var mounts []string
	for _, vm := range pod.Containers[0].VolumeMounts {
		mounts = append(mounts, vm.Name)
	}
	if got := strings.Join(mounts, " "); got != "plexsphere-socket cache config data" {
		t.Errorf("core mounts %s", got)
	}
}
