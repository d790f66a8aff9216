// Command kindcluster drives kind through its Go API (sigs.k8s.io/kind), so
// the e2e needs no kind binary: it detects what this host needs to run kind
// nodes, creates and deletes the cluster, prints its kubeconfig and loads
// locally built images into its nodes.
//
//	go run ./tests/e2e/kindcluster detect
//	go run ./tests/e2e/kindcluster default-image
//	go run ./tests/e2e/kindcluster create [--single-node] [--image IMG] kind-config.yaml
//	go run ./tests/e2e/kindcluster load plexsphere/signer:dev ...
//	go run ./tests/e2e/kindcluster kubeconfig > kubeconfig
//	go run ./tests/e2e/kindcluster delete
//
// Host workarounds are applied only when detect finds their cause:
//   - capabilities missing from the host's bounding set (seen: CAP_SYS_RESOURCE):
//     `docker exec --privileged` (kind runs every node command so) fails, so
//     the nodes run under a runc wrapper
//     (runcwrap) registered as an extra Docker runtime, and containerd in the
//     nodes stops asking for lower OOM scores (restrict_oom_score_adj);
//   - a cgroup v1 host: kubelet >= 1.35 needs failCgroupV1: false;
//   - Docker on fuse-overlayfs: the nodes' containerd uses overlayfs
//     (KIND_EXPERIMENTAL_CONTAINERD_SNAPSHOTTER).
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/kind/pkg/apis/config/defaults"
	"sigs.k8s.io/kind/pkg/apis/config/v1alpha4"
	"sigs.k8s.io/kind/pkg/cluster"
	"sigs.k8s.io/kind/pkg/cluster/nodeutils"
	"sigs.k8s.io/yaml"
)

const name = "plexsphere-e2e"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "kindcluster:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: kindcluster detect | create [--single-node] [--image IMG] <config> | load <image>... | kubeconfig | delete")
	}
	p := cluster.NewProvider(cluster.ProviderWithDocker())
	switch args[0] {
	case "detect":
		h, err := detect()
		if err != nil {
			return err
		}
		fmt.Println(h)
		return nil
	case "create":
		return create(p, args[1:])
	case "delete":
		return p.Delete(name, "")
	case "prepare": // apply the host workarounds alone (e.g. before a manual `kind create`)
		h, err := detect()
		if err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "kindcluster: host:", h)
		return h.apply(&v1alpha4.Cluster{})
	case "default-image": // kind's published node image for this kind release
		fmt.Println(defaults.Image)
		return nil
	case "kubeconfig":
		cfg, err := p.KubeConfig(name, false)
		if err != nil {
			return err
		}
		fmt.Print(cfg)
		return nil
	case "load":
		return load(p, args[1:])
	}
	return fmt.Errorf("unknown command %q", args[0])
}

func create(p *cluster.Provider, args []string) error {
	fs := flag.NewFlagSet("create", flag.ContinueOnError)
	single := fs.Bool("single-node", false, "keep only the first control-plane node of the config (CI)")
	image := fs.String("image", "", "node image for every node (default: the config's)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("create takes the kind config file")
	}
	raw, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return err
	}
	var c v1alpha4.Cluster
	if err := yaml.UnmarshalStrict(raw, &c); err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	if *single {
		for _, n := range c.Nodes {
			if n.Role == v1alpha4.ControlPlaneRole {
				c.Nodes = []v1alpha4.Node{n}
				break
			}
		}
	}
	for i := range c.Nodes {
		if *image != "" {
			c.Nodes[i].Image = *image
		}
	}
	h, err := detect()
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "kindcluster: host:", h)
	if err := h.apply(&c); err != nil {
		return err
	}
	out, _ := yaml.Marshal(c)
	fmt.Fprintf(os.Stderr, "kindcluster: creating %s (%d node(s)):\n%s", name, len(c.Nodes), out)
	start := time.Now()
	if err := p.Create(name, cluster.CreateWithV1Alpha4Config(&c), cluster.CreateWithWaitForReady(5*time.Minute),
		cluster.CreateWithDisplayUsage(false), cluster.CreateWithDisplaySalutation(false)); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "kindcluster: %s ready in %.0fs\n", name, time.Since(start).Seconds())
	return nil
}

func load(p *cluster.Provider, images []string) error {
	nodes, err := p.ListInternalNodes(name)
	if err != nil {
		return err
	}
	for _, image := range images {
		for _, n := range nodes {
			// docker save streams the image; each node imports it.
			cmd := exec.Command("docker", "save", image)
			out, err := cmd.StdoutPipe()
			if err != nil {
				return err
			}
			if err := cmd.Start(); err != nil {
				return err
			}
			if err := nodeutils.LoadImageArchive(n, out); err != nil {
				return fmt.Errorf("load %s into %s: %w", image, n, err)
			}
			if err := cmd.Wait(); err != nil {
				return err
			}
		}
		fmt.Fprintln(os.Stderr, "kindcluster: loaded", image)
	}
	return nil
}

// host is what detect found.
type host struct {
	missingCaps   []string // privileged containers would ask for these
	cgroupV1      bool
	storageDriver string
}

func (h host) String() string {
	var w []string
	if len(h.missingCaps) > 0 {
		w = append(w, fmt.Sprintf("capabilities %s missing from the bounding set: nodes run under the %s runtime, containerd restrict_oom_score_adj", strings.Join(h.missingCaps, ","), runtimeName))
	}
	if h.cgroupV1 {
		w = append(w, "cgroup v1: kubelet failCgroupV1=false")
	}
	if h.storageDriver == "fuse-overlayfs" {
		w = append(w, "Docker on fuse-overlayfs: KIND_EXPERIMENTAL_CONTAINERD_SNAPSHOTTER=overlayfs")
	}
	if len(w) == 0 {
		return "no workaround needed"
	}
	return strings.Join(w, "; ")
}

func detect() (host, error) {
	var h host
	missing, err := missingCapabilities()
	if err != nil {
		return h, err
	}
	h.missingCaps = missing
	info, err := exec.Command("docker", "info", "--format", "{{.CgroupVersion}} {{.Driver}}").Output()
	if err != nil {
		return h, fmt.Errorf("docker info: %w", err)
	}
	f := strings.Fields(string(info))
	if len(f) != 2 {
		return h, fmt.Errorf("docker info: unexpected %q", info)
	}
	h.cgroupV1 = f[0] == "1"
	h.storageDriver = f[1]
	return h, nil
}

// apply changes the cluster config and this process's environment (which
// kind's docker calls inherit) for what detect found.
func (h host) apply(c *v1alpha4.Cluster) error {
	if h.cgroupV1 {
		c.KubeadmConfigPatches = append(c.KubeadmConfigPatches,
			"kind: KubeletConfiguration\nfailCgroupV1: false\n")
	}
	if h.storageDriver == "fuse-overlayfs" {
		os.Setenv("KIND_EXPERIMENTAL_CONTAINERD_SNAPSHOTTER", "overlayfs")
	}
	if len(h.missingCaps) > 0 {
		// containerd in the node would otherwise give pods' processes an OOM
		// score below its own, which needs CAP_SYS_RESOURCE.
		c.ContainerdConfigPatches = append(c.ContainerdConfigPatches,
			"[plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n")
		if err := installRuntime(); err != nil {
			return err
		}
	}
	return nil
}

const runtimeName = "plexsphere-runc"

// installRuntime builds runcwrap, registers it with the Docker daemon as an
// extra runtime (the default stays runc; other containers are untouched)
// and puts a docker shim first on PATH that runs kind's node containers
// with it.
func installRuntime() error {
	dir := "/usr/local/libexec/plexsphere"
	wrapper := filepath.Join(dir, "runc-wrapper")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	build := exec.Command("go", "build", "-trimpath", "-o", wrapper+".new", "./tests/e2e/kindcluster/runcwrap")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build runcwrap: %v\n%s", err, out)
	}
	if err := os.Rename(wrapper+".new", wrapper); err != nil {
		return err
	}
	if err := registerRuntime(wrapper); err != nil {
		return err
	}
	docker, err := exec.LookPath("docker")
	if err != nil {
		return err
	}
	shimDir, err := os.MkdirTemp("", "kindcluster-docker")
	if err != nil {
		return err
	}
	shim := fmt.Sprintf("#!/bin/sh\n# kind runs its nodes with `docker run`: under %s here.\n"+
		"if [ \"$1\" = run ]; then shift; exec %s run --runtime=%s \"$@\"; fi\nexec %s \"$@\"\n", runtimeName, docker, runtimeName, docker)
	if err := os.WriteFile(filepath.Join(shimDir, "docker"), []byte(shim), 0o755); err != nil {
		return err
	}
	return os.Setenv("PATH", shimDir+string(os.PathListSeparator)+os.Getenv("PATH"))
}
