package e2e

import (
	"os"
	"testing"

	"sigs.k8s.io/kind/pkg/apis/config/defaults"
	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/kind/pkg/cluster"
	"sigs.k8s.io/yaml"
)

// kind-config.yaml parses strictly as kind's v1alpha4 Cluster, pins every
// node to the default image of the kind release in go.mod (by digest: kind
// >= v0.24 images, whose kindnet enforces NetworkPolicy), keeps the default
// CNI, and has workers for the replicas to spread over. This is as far as
// a machine without a node image can check it; scripts/e2e-kind.sh uses it.
func TestKindConfig(t *testing.T) {
	raw, err := os.ReadFile("../../kind-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c v1alpha4.Cluster
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		t.Fatalf("kind-config.yaml: %v", err)
	}
	if c.Kind != "Cluster" || c.APIVersion != "kind.x-k8s.io/v1alpha4" || c.Networking.DisableDefaultCNI {
		t.Fatalf("config %+v", c)
	}
	workers := 0
	for _, n := range c.Nodes {
		if n.Image != defaults.Image {
			t.Errorf("node %s image %q, want kind's pinned default %q", n.Role, n.Image, defaults.Image)
		}
		if n.Role == v1alpha4.WorkerRole {
			workers++
		}
	}
	if workers < 2 {
		t.Errorf("%d workers: the signer's two replicas need two to spread over", workers)
	}
	// The option kindcluster passes accepts the file.
	_ = cluster.CreateWithConfigFile("../../kind-config.yaml")
}
