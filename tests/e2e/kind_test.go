//go:build e2e

package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// These run against the cluster scripts/e2e-kind.sh sets up (KUBECONFIG
// exported by it): the same scenarios as docker_test.go, on Kubernetes.

func kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("kubectl", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
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
			t.Fatal(why)
		}
		time.Sleep(2 * time.Second)
	}
}

func TestKindCoreSignsThroughItsSidecar(t *testing.T) {
	eventually(t, 3*time.Minute, func() string {
		logs := kubectl(t, "-n", "apps", "logs", "deploy/core", "-c", "core", "--tail=50")
		if !strings.Contains(logs, "signed and verified") {
			return "core has not signed yet:\n" + logs
		}
		return ""
	})
}

// A pod without the injection label is stopped by the NetworkPolicy: its
// sidecar cannot connect at all (Unavailable), it is not even denied.
func TestKindUnlabelledPodCannotConnect(t *testing.T) {
	kubectl(t, "-n", "apps", "apply", "-f", "kind/unlabelled-pod.yaml")
	defer kubectl(t, "-n", "apps", "delete", "pod", "unlabelled", "--ignore-not-found")
	eventually(t, 3*time.Minute, func() string {
		logs, _ := exec.Command("kubectl", "-n", "apps", "logs", "unlabelled", "-c", "core").CombinedOutput()
		if !strings.Contains(string(logs), "Unavailable") {
			return "no connection failure yet:\n" + string(logs)
		}
		if strings.Contains(string(logs), "identity denied") {
			return "the unlabelled pod reached the signer"
		}
		return ""
	})
}

// A labelled pod whose identity is not on the list reaches the signer and
// is denied, and the signer logs the audited denial.
func TestKindIntruderDenied(t *testing.T) {
	kubectl(t, "-n", "apps", "apply", "-f", "kind/intruder-pod.yaml")
	defer kubectl(t, "-n", "apps", "delete", "pod", "intruder", "--ignore-not-found")
	eventually(t, 3*time.Minute, func() string {
		logs, _ := exec.Command("kubectl", "-n", "apps", "logs", "intruder", "-c", "core").CombinedOutput()
		if !strings.Contains(string(logs), "identity denied") {
			return "intruder not denied yet:\n" + string(logs)
		}
		return ""
	})
	signer := kubectl(t, "-n", "plexsphere", "logs", "-l", "app.kubernetes.io/name=plexsphere-signer", "--tail=500")
	if !strings.Contains(signer, `"outcome":"denied_not_on_list"`) || !strings.Contains(signer, "spiffe://example.org/ns/apps/sa/intruder") {
		t.Fatalf("signer did not log the denial:\n%s", signer)
	}
}

// Deleting a signer replica under load: the core keeps signing; its only
// failures are Unavailable.
func TestKindKillReplica(t *testing.T) {
	pods := strings.Fields(kubectl(t, "-n", "plexsphere", "get", "pods", "-l", "app.kubernetes.io/name=plexsphere-signer", "-o", "name"))
	if len(pods) < 2 {
		t.Fatalf("want 2 replicas, have %v", pods)
	}
	kubectl(t, "-n", "plexsphere", "delete", pods[0], "--wait=false")
	eventually(t, 3*time.Minute, func() string {
		logs := kubectl(t, "-n", "apps", "logs", "deploy/core", "-c", "core", "--since=60s")
		for _, line := range strings.Split(logs, "\n") {
			if strings.HasPrefix(line, "failed: ") && !strings.HasPrefix(line, "failed: Unavailable") {
				t.Fatalf("a failure other than Unavailable: %s", line)
			}
		}
		if !strings.Contains(logs, "signed and verified") {
			return "core stopped signing after the replica was deleted"
		}
		return ""
	})
}
