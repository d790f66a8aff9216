package charts

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	helmvalues "helm.sh/helm/v3/pkg/cli/values"
	"helm.sh/helm/v3/pkg/getter"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/config"
)

// The documented examples (docs/examples, used by docs/install.md and, with
// tests/e2e/kind's overlays on top, by the kind e2e) render, and fit one
// another: the core's sidecar dials the signer the chart renders and
// expects its SPIFFE ID, the core and the operator's Job are on the
// signer's allow-lists, and the Job reaches the signer through its
// NetworkPolicy with signerctl's own settings.

const examples = "../docs/examples/"

// valuesFiles merges values files and --set-json values as `helm install
// -f a -f b --set-json x` does.
func valuesFiles(t *testing.T, files []string, setJSON ...string) map[string]any {
	t.Helper()
	opts := helmvalues.Options{ValueFiles: files, JSONValues: setJSON}
	v, err := opts.MergeValues(getter.Providers{})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// The example signer: each documented combination renders, with the
// settings the guide says it has.
func TestDocumentedSignerValues(t *testing.T) {
	kindWitnesses := `audit.witnesses=[{"name":"e2e-witness","verifierKey":"` + witnessKey(t, "e2e-witness") + `","url":"http://omniwitness.witness.svc"}]`
	for _, tc := range []struct {
		name    string
		files   []string
		setJSON []string
		check   func(t *testing.T, m manifests, c corev1.Container)
	}{
		{"first install", []string{"signer-values.yaml"}, nil, func(t *testing.T, m manifests, c corev1.Container) {
			if len(m.deployments) != 1 || len(m.jobs) != 1 || len(m.claims) != 1 {
				t.Errorf("%d deployments, %d migration jobs, %d claims", len(m.deployments), len(m.jobs), len(m.claims))
			}
			if got := envValue(c, "SIGNER_CHECKPOINT_LOG"); got == "" {
				t.Error("no checkpoint file: the first install's anchor")
			}
			if got := envValue(c, "SIGNER_WITNESS_POLICY_FILE"); got != "" {
				t.Errorf("witnesses at the first install: %s", got)
			}
			if got := envValue(c, "SIGNER_WORKLOAD_API_ADDR"); got != "unix:///spiffe-workload-api/spire-agent.sock" {
				t.Errorf("identity %q", got)
			}
		}},
		{"witnesses and the pinned key", []string{"signer-values.yaml", "signer-witnesses-values.yaml"}, nil, func(t *testing.T, m manifests, c corev1.Container) {
			if !strings.HasPrefix(envValue(c, "SIGNER_CHECKPOINT_VERIFIER_KEY"), "example.org/plexsphere-signer+") {
				t.Errorf("pinned key %q", envValue(c, "SIGNER_CHECKPOINT_VERIFIER_KEY"))
			}
			if len(m.configMaps) != 1 {
				t.Fatalf("%d ConfigMaps", len(m.configMaps))
			}
			p, err := auditlog.ParseWitnessPolicy([]byte(m.configMaps[0].Data["policy"]))
			if err != nil {
				t.Fatalf("the example's witness policy: %v", err)
			}
			if p == nil {
				t.Fatal("no policy")
			}
		}},
		{"pkcs11", []string{"signer-values.yaml", "signer-pkcs11-values.yaml"}, nil, func(t *testing.T, m manifests, c corev1.Container) {
			if !strings.HasSuffix(c.Image, "-pkcs11:dev") || envValue(c, "SIGNER_PROVIDER") != "pkcs11" || envValue(c, "SIGNER_PKCS11_PIN_FILE") == "" {
				t.Errorf("image %s, provider %q", c.Image, envValue(c, "SIGNER_PROVIDER"))
			}
		}},
		// What scripts/e2e-kind.sh installs.
		{"kind e2e", []string{"signer-values.yaml", "../../tests/e2e/kind/signer-values.yaml"}, []string{kindWitnesses}, func(t *testing.T, m manifests, c corev1.Container) {
			pod, _ := signerPod(t, m)
			if v := volumeOf(pod.Spec, "spiffe-identity"); v == nil || v.HostPath == nil {
				t.Errorf("identity volume %+v: kind has no SPIFFE CSI driver, the agent socket comes by hostPath", v)
			}
			if c.ImagePullPolicy != corev1.PullNever || envValue(c, "SIGNER_WITNESS_POLICY_FILE") == "" {
				t.Errorf("pull policy %s, witness policy %q", c.ImagePullPolicy, envValue(c, "SIGNER_WITNESS_POLICY_FILE"))
			}
			// The kind overlay's Postgres is in the cluster: only its pod
			// labels, not the example's CIDR.
			pol := policyNamed(t, m, "signer")
			for _, r := range pol.Spec.Egress {
				for _, p := range r.To {
					if p.IPBlock != nil && p.IPBlock.CIDR == "10.20.0.0/24" {
						t.Error("the kind overlay kept the example's Postgres CIDR")
					}
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var files []string
			for _, f := range tc.files {
				files = append(files, examples+f)
			}
			m, err := render(t, "plexsphere-signer", valuesFiles(t, files, tc.setJSON...))
			if err != nil {
				t.Fatal(err)
			}
			_, c := signerPod(t, m)
			tc.check(t, m, c)
		})
	}
}

// The example core, the example signer and the example Job fit together.
func TestDocumentedExamplesFitTogether(t *testing.T) {
	sv := valuesFiles(t, []string{examples + "signer-values.yaml"})
	sm, err := render(t, "plexsphere-signer", sv)
	if err != nil {
		t.Fatal(err)
	}
	_, signer := signerPod(t, sm)
	const td = "spiffe://example.org"
	// render() installs release "signer" in namespace "plexsphere", as the
	// guide does.
	signerID := fmt.Sprintf("%s/ns/plexsphere/sa/%s", td, sm.serviceAccounts[0].Name)
	allow := strings.Split(envValue(signer, "SIGNER_ALLOW_SPIFFE_IDS"), ",")
	operators := strings.Split(envValue(signer, "SIGNER_ROTATION_ALLOW_SPIFFE_IDS"), ",")
	var grpcService, headless string
	for _, s := range sm.services {
		switch {
		case s.Spec.ClusterIP == corev1.ClusterIPNone:
			headless = fmt.Sprintf("%s.plexsphere.svc:%d", s.Name, s.Spec.Ports[0].Port)
		case strings.HasSuffix(s.Name, "-ops"), strings.HasSuffix(s.Name, "-jwks"):
		default:
			grpcService = fmt.Sprintf("%s.plexsphere.svc:%d", s.Name, s.Spec.Ports[0].Port)
		}
	}

	for _, files := range [][]string{{examples + "core-values.yaml"}, {examples + "core-values.yaml", "../tests/e2e/kind/core-values.yaml"}} {
		t.Run(strings.Join(files, "+"), func(t *testing.T) {
			cm, err := render(t, "example-core", valuesFiles(t, files))
			if err != nil {
				t.Fatal(err)
			}
			pod := cm.deployments[0].Spec.Template
			sc := pod.Spec.InitContainers[0]
			if got := envValue(sc, "SIDECAR_SIGNER_SPIFFE_ID"); got != signerID {
				t.Errorf("the sidecar expects the signer to be %s; the chart's signer is %s", got, signerID)
			}
			if got := envValue(sc, "SIDECAR_UPSTREAM"); got != "dns:///"+headless {
				t.Errorf("the sidecar dials %s; the signer's headless Service is %s", got, headless)
			}
			// render() puts the core in namespace plexsphere; the guide and
			// the e2e install it in apps.
			coreID := fmt.Sprintf("%s/ns/apps/sa/%s", td, pod.Spec.ServiceAccountName)
			if !slices.Contains(allow, coreID) {
				t.Errorf("the core's ID %s is not on the example signer's allowSpiffeIDs %v", coreID, allow)
			}
			if pod.Labels["plexsphere.io/signer-client"] != "true" {
				t.Errorf("core pod labels %v: the signer's NetworkPolicy would not admit it", pod.Labels)
			}
		})
	}

	raw, err := os.ReadFile(examples + "signerctl-job.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var job batchv1.Job
	if err := yaml.UnmarshalStrict(raw, &job); err != nil {
		t.Fatalf("signerctl-job.yaml: %v", err)
	}
	spec := job.Spec.Template.Spec
	if len(spec.Containers) != 1 || spec.Containers[0].Name != "signerctl" {
		t.Fatalf("containers %+v: the SPIRE entry selects the container named signerctl", spec.Containers)
	}
	ctl := spec.Containers[0]
	known := settingsOf(config.Ctl{})
	for _, e := range ctl.Env {
		if !slices.Contains(known, e.Name) {
			t.Errorf("the Job sets %s, which signerctl does not read (it reads %v)", e.Name, known)
		}
	}
	if got := envValue(ctl, "SIGNERCTL_SIGNER"); got != grpcService {
		t.Errorf("the Job dials %s; the signer's Service is %s", got, grpcService)
	}
	if got := envValue(ctl, "SIGNERCTL_SIGNER_SPIFFE_ID"); got != signerID {
		t.Errorf("the Job expects the signer to be %s; it is %s", got, signerID)
	}
	if op := fmt.Sprintf("%s/ns/plexsphere/sa/%s", td, spec.ServiceAccountName); !slices.Contains(operators, op) {
		t.Errorf("the Job's identity %s is not on the example's rotationAllowSpiffeIDs %v", op, operators)
	}
	if job.Spec.Template.Labels["plexsphere.io/signer-client"] != "true" {
		t.Errorf("Job pod labels %v: the signer's NetworkPolicy would not admit it", job.Spec.Template.Labels)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the Job mounts an API token it never uses")
	}
	if len(spec.Volumes) != 1 || spec.Volumes[0].CSI == nil || spec.Volumes[0].CSI.Driver != "csi.spiffe.io" {
		t.Errorf("volumes %+v: the Workload API through the SPIFFE CSI driver, as the example signer's", spec.Volumes)
	}
	if got, want := envValue(ctl, "SIGNERCTL_WORKLOAD_API_ADDR"), envValue(signer, "SIGNER_WORKLOAD_API_ADDR"); got != want {
		t.Errorf("the Job's Workload API %s, the signer's %s", got, want)
	}
	checkHardened(t, "signerctl job", spec, ctl)
}

// docs/install.md names every example file, and every file it names exists.
func TestInstallGuideNamesTheExamples(t *testing.T) {
	guide, err := os.ReadFile("../docs/install.md")
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(examples)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		files = append(files, e.Name())
		if !strings.Contains(string(guide), "examples/"+e.Name()) {
			t.Errorf("docs/install.md never names examples/%s", e.Name())
		}
	}
	for _, m := range regexp.MustCompile(`examples/([A-Za-z0-9._-]+\.ya?ml)`).FindAllStringSubmatch(string(guide), -1) {
		if !slices.Contains(files, m[1]) {
			t.Errorf("docs/install.md names examples/%s, which does not exist", m[1])
		}
	}
	if len(files) < 5 {
		t.Errorf("%d example files", len(files))
	}
}
