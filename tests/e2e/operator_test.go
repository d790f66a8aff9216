package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// The kind e2e runs signerctl from the documented Job
// (docs/examples/signerctl-job.yaml, docs/install.md), changed only where
// kind differs: the agent socket by hostPath (no SPIFFE CSI driver), images
// loaded into the node, a wait for the NetworkPolicy to admit the new pod,
// and the release, command and pinned settings of each scenario.

const documentedJob = "../../docs/examples/signerctl-job.yaml"

// The signer's namespace and the trust domain, as docs/install.md and
// scripts/e2e-kind.sh name them.
const (
	nsSigner = "plexsphere"
	kindTD   = "example.org"
)

// ctlOpts are what an operator pins and checks with: the log's checkpoint
// verifier key (SIGNERCTL_CHECKPOINT_KEY, from the signer's start-up line)
// and the signer release's witness policy (its ConfigMap
// <release>-witness-policy, mounted as the file --witness-policy names).
type ctlOpts struct {
	checkpointKey string
	witnessPolicy bool
}

// operatorJob is the documented signerctl Job, adapted for the kind e2e,
// against the signer release in namespace plexsphere.
func operatorJob(release, restart string, o ctlOpts, args ...string) (batchv1.Job, error) {
	var job batchv1.Job
	raw, err := os.ReadFile(documentedJob)
	if err != nil {
		return job, err
	}
	if err := yaml.UnmarshalStrict(raw, &job); err != nil {
		return job, fmt.Errorf("%s: %w", documentedJob, err)
	}
	tpl := &job.Spec.Template
	if tpl.Labels == nil {
		tpl.Labels = map[string]string{}
	}
	tpl.Labels["e2e"] = "operator"
	spec := &tpl.Spec
	spec.RestartPolicy = corev1.RestartPolicy(restart)
	if len(spec.Containers) != 1 || spec.Containers[0].Name != "signerctl" {
		return job, fmt.Errorf("%s: want one container named signerctl, have %d", documentedJob, len(spec.Containers))
	}
	ctl := &spec.Containers[0]
	ctl.Args = args
	ctl.ImagePullPolicy = corev1.PullNever
	signer := release + "." + nsSigner + ".svc:8443"
	set := map[string]string{
		"SIGNERCTL_SIGNER":           signer,
		"SIGNERCTL_SIGNER_SPIFFE_ID": fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", kindTD, nsSigner, release),
	}
	if o.checkpointKey != "" {
		set["SIGNERCTL_CHECKPOINT_KEY"] = o.checkpointKey
	}
	if o.witnessPolicy {
		set["SIGNERCTL_WITNESS_POLICY_FILE"] = "/etc/plexsphere/witnesses/policy"
	}
	for i := range ctl.Env {
		if v, ok := set[ctl.Env[i].Name]; ok {
			ctl.Env[i].Value = v
			delete(set, ctl.Env[i].Name)
		}
	}
	for _, name := range []string{"SIGNERCTL_SIGNER", "SIGNERCTL_SIGNER_SPIFFE_ID", "SIGNERCTL_CHECKPOINT_KEY", "SIGNERCTL_WITNESS_POLICY_FILE"} {
		if v, ok := set[name]; ok {
			ctl.Env = append(ctl.Env, corev1.EnvVar{Name: name, Value: v})
		}
	}
	// kind has no SPIFFE CSI driver: the agent's socket directory by
	// hostPath, under the documented volume's name and mount.
	replaced := false
	for i := range spec.Volumes {
		if spec.Volumes[i].CSI != nil {
			spec.Volumes[i].VolumeSource = corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{
				Path: "/run/spire/agent-sockets", Type: ptr(corev1.HostPathDirectory)}}
			replaced = true
		}
	}
	if !replaced {
		return job, fmt.Errorf("%s: no CSI volume for the Workload API", documentedJob)
	}
	if o.witnessPolicy {
		ctl.VolumeMounts = append(ctl.VolumeMounts, corev1.VolumeMount{Name: "witness-policy", MountPath: "/etc/plexsphere/witnesses", ReadOnly: true})
		spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "witness-policy", VolumeSource: corev1.VolumeSource{
			ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: release + "-witness-policy"}}}})
	}
	// Start signerctl only once the policy admits this new pod (kube-router
	// admits a new pod's address a moment after it starts).
	spec.InitContainers = append(spec.InitContainers, corev1.Container{
		Name:            "reachable",
		Image:           "plexsphere/e2e-probe:dev",
		ImagePullPolicy: corev1.PullNever,
		Args:            []string{"--until-ok", "60s", "--every", "200ms", "--timeout", "1s", signer},
		SecurityContext: ctl.SecurityContext,
	})
	return job, nil
}

func ptr[T any](v T) *T { return &v }

// The adaptation keeps the documented Job's identity, label and hardening
// and changes only what kind needs.
func TestOperatorJobFromTheDocumentedFile(t *testing.T) {
	job, err := operatorJob("signer-bbolt", "Never", ctlOpts{checkpointKey: "example.org/plexsphere-signer+01234567+AQ", witnessPolicy: true}, "keys", "list")
	if err != nil {
		t.Fatal(err)
	}
	out, err := yaml.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	var back batchv1.Job
	if err := yaml.UnmarshalStrict(out, &back); err != nil {
		t.Fatalf("the adapted Job does not decode strictly: %v\n%s", err, out)
	}
	spec := back.Spec.Template.Spec
	ctl := spec.Containers[0]
	env := map[string]string{}
	for _, e := range ctl.Env {
		if _, dup := env[e.Name]; dup {
			t.Errorf("%s set twice", e.Name)
		}
		env[e.Name] = e.Value
	}
	for name, want := range map[string]string{
		"SIGNERCTL_SIGNER":              "signer-bbolt.plexsphere.svc:8443",
		"SIGNERCTL_SIGNER_SPIFFE_ID":    "spiffe://example.org/ns/plexsphere/sa/signer-bbolt",
		"SIGNERCTL_WORKLOAD_API_ADDR":   "unix:///spiffe-workload-api/spire-agent.sock",
		"SIGNERCTL_OUTPUT":              "json",
		"SIGNERCTL_CHECKPOINT_KEY":      "example.org/plexsphere-signer+01234567+AQ",
		"SIGNERCTL_WITNESS_POLICY_FILE": "/etc/plexsphere/witnesses/policy",
	} {
		if env[name] != want {
			t.Errorf("%s=%q, want %q", name, env[name], want)
		}
	}
	if strings.Join(ctl.Args, " ") != "keys list" || ctl.ImagePullPolicy != corev1.PullNever || spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("args %v, pull %s, restart %s", ctl.Args, ctl.ImagePullPolicy, spec.RestartPolicy)
	}
	if spec.ServiceAccountName != "signer-operator" || back.Spec.Template.Labels["plexsphere.io/signer-client"] != "true" {
		t.Errorf("service account %q, labels %v: the operator's identity and the label the signer admits", spec.ServiceAccountName, back.Spec.Template.Labels)
	}
	var hostPath, policy bool
	for _, v := range spec.Volumes {
		if v.CSI != nil {
			t.Errorf("volume %s still uses the CSI driver, which kind lacks", v.Name)
		}
		hostPath = hostPath || (v.HostPath != nil && v.HostPath.Path == "/run/spire/agent-sockets")
		policy = policy || (v.ConfigMap != nil && v.ConfigMap.Name == "signer-bbolt-witness-policy")
	}
	if !hostPath || !policy || len(spec.InitContainers) != 1 || spec.InitContainers[0].Args[len(spec.InitContainers[0].Args)-1] != "signer-bbolt.plexsphere.svc:8443" {
		t.Errorf("agent socket by hostPath %v, witness policy %v, init containers %+v", hostPath, policy, spec.InitContainers)
	}
	if sc := ctl.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("hardening lost: %+v, automount %v", sc, spec.AutomountServiceAccountToken)
	}
}
