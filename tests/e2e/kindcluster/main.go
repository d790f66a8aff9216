// Command kindcluster drives kind through its Go API (sigs.k8s.io/kind), so
// the e2e needs no kind binary: create and delete the cluster, print its
// kubeconfig, and load locally built images into its nodes.
//
//	go run ./tests/e2e/kindcluster create kind-config.yaml
//	go run ./tests/e2e/kindcluster load plexsphere/signer:dev ...
//	go run ./tests/e2e/kindcluster kubeconfig > kubeconfig
//	go run ./tests/e2e/kindcluster delete
package main

import (
	"fmt"
	"os"
	"os/exec"
	"time"

	"sigs.k8s.io/kind/pkg/cluster"
	"sigs.k8s.io/kind/pkg/cluster/nodeutils"
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
		return fmt.Errorf("usage: kindcluster create <config> | load <image>... | kubeconfig | delete")
	}
	p := cluster.NewProvider(cluster.ProviderWithDocker())
	switch args[0] {
	case "create":
		if len(args) != 2 {
			return fmt.Errorf("create takes the kind config file")
		}
		return p.Create(name, cluster.CreateWithConfigFile(args[1]), cluster.CreateWithWaitForReady(5*time.Minute))
	case "delete":
		return p.Delete(name, "")
	case "kubeconfig":
		cfg, err := p.KubeConfig(name, false)
		if err != nil {
			return err
		}
		fmt.Print(cfg)
		return nil
	case "load":
		nodes, err := p.ListInternalNodes(name)
		if err != nil {
			return err
		}
		for _, image := range args[1:] {
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
			fmt.Println("loaded", image)
		}
		return nil
	}
	return fmt.Errorf("unknown command %q", args[0])
}
