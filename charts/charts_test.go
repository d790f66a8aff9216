package charts

import (
	"fmt"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// manifests are the rendered objects, decoded strictly by kind.
type manifests struct {
	deployments     []appsv1.Deployment
	services        []corev1.Service
	serviceAccounts []corev1.ServiceAccount
	policies        []networkingv1.NetworkPolicy
	pdbs            []policyv1.PodDisruptionBudget
}

// render installs the chart in dry-run, client-only mode and decodes every
// manifest; an unknown field anywhere is an error.
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
	for _, doc := range strings.Split(rel.Manifest, "\n---") {
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
provider:
  type: local
  local:
    kekSecret: {name: signer-kek, key: kek}
identity:
  mode: spiffe-csi
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
	if len(m.deployments) != 1 || len(m.serviceAccounts) != 1 || len(m.policies) != 1 || len(m.pdbs) != 1 || len(m.services) != 3 {
		t.Fatalf("rendered %d deployments, %d SAs, %d policies, %d PDBs, %d services", len(m.deployments), len(m.serviceAccounts), len(m.policies), len(m.pdbs), len(m.services))
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
	if c.ReadinessProbe == nil || c.ReadinessProbe.GRPC == nil || c.StartupProbe == nil || c.StartupProbe.GRPC == nil {
		t.Errorf("probes must use gRPC health: readiness %+v startup %+v", c.ReadinessProbe, c.StartupProbe)
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
	if m.pdbs[0].Spec.MinAvailable == nil || m.pdbs[0].Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("PDB %+v", m.pdbs[0].Spec)
	}

	// NetworkPolicy: default deny both ways; gRPC in only from labelled pods
	// in the allowed namespaces (one peer: both selectors must match).
	np := m.policies[0].Spec
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

func TestSignerChartRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, extra, want string
	}{
		{"bbolt with replicas", "replicaCount: 2\nstore: {type: bbolt}", "bbolt serves one replica"},
		{"postgres without a DSN secret", "store: {type: postgres, postgres: {dsnSecret: {name: '', key: dsn}}}", "dsnSecret.name is required"},
		{"bad SPIFFE ID", "allowSpiffeIDs: [core]", "allowSpiffeIDs"},
		{"core may not rotate", "rotationAllowSpiffeIDs: [\"" + coreID + "\"]", "must never rotate"},
		{"unknown value", "replicas: 3", "additional properties"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := values(t, signerValues)
			for k, x := range values(t, tc.extra) {
				v[k] = x
			}
			_, err := render(t, "plexsphere-signer", v)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
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
	if !strings.Contains(strings.Join(core.Args, " "), "--signer unix:///run/plexsphere/signer.sock") {
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
		{"core mounts the identity", "extraVolumeMounts: [{name: plexsphere-identity, mountPath: /id}]", "must not mount the sidecar's identity volume"},
		{"core gets the SVID path", "extraEnv: [{name: SIDECAR_SVID_KEY_FILE, value: /id/key}]", "must not receive SIDECAR_SVID_KEY_FILE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := values(t, coreValues)
			for k, x := range values(t, tc.extra) {
				if sub, ok := x.(map[string]any); ok && k == "sidecar" {
					for sk, sv := range sub {
						v["sidecar"].(map[string]any)[sk] = sv
					}
					continue
				}
				v[k] = x
			}
			_, err := render(t, "example-core", v)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
