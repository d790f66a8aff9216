package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plexsphere/signer/internal/nomaterial"
)

// noMaterialRoots are the binaries and libraries a core links, and the
// sigstore KMS plugin cosign runs beside a core: none may hold an Ed25519
// private half.
var noMaterialRoots = []string{"./client/...", "./sidecar/...", "./cmd/plexsphere-sidecar", "./examples/core", "./cmd/sigstore-kms-plexsphere"}

const module = "github.com/plexsphere/signer"

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// The specification's check: go list -deps over the roots, first-party
// packages only, every non-test Go file, no occurrence of
// "ed25519.PrivateKey". A single match is a hard failure.
func TestCoreBinaryHoldsNoSigningMaterial(t *testing.T) {
	root := repoRoot(t)
	cmd := exec.Command("go", append([]string{"list", "-deps", "-json=ImportPath,Dir,GoFiles,CgoFiles,Module"}, noMaterialRoots...)...)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	scanned := 0
	for dec.More() {
		var p struct {
			ImportPath        string
			Dir               string
			GoFiles, CgoFiles []string
			Module            *struct{ Path string }
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		if p.Module == nil || p.Module.Path != module {
			continue
		}
		for _, f := range append(p.GoFiles, p.CgoFiles...) {
			path := filepath.Join(p.Dir, f)
			scanned++
			fh, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			s := bufio.NewScanner(fh)
			for n := 1; s.Scan(); n++ {
				if strings.Contains(s.Text(), "ed25519.PrivateKey") {
					t.Errorf("%s:%d: ed25519.PrivateKey in the core binary's import graph (package %s)", path, n, p.ImportPath)
				}
			}
			fh.Close()
		}
	}
	if scanned < 10 {
		t.Fatalf("scanned only %d files: the import graph was not walked", scanned)
	}
}

// The type-aware check catches what the text scan cannot (renamed imports,
// aliases, GenerateKey/NewKeyFromSeed); internal/nomaterial's fixtures prove
// it fails on each.
func TestCoreBinaryHoldsNoSigningMaterialTypeAware(t *testing.T) {
	findings, checked, err := nomaterial.Scan(repoRoot(t), noMaterialRoots...)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range findings {
		t.Error(f)
	}
	for _, must := range []string{module + "/client", module + "/sidecar", module + "/examples/core", module + "/internal/kmsplugin"} {
		found := false
		for _, p := range checked {
			found = found || p == must
		}
		if !found {
			t.Fatalf("%s was not checked (checked %v)", must, checked)
		}
	}
}

// serverSide is what a core-side binary must never link: the store, the
// key providers, the audit writer and the signer's error table's package.
var serverSide = []string{module + "/internal/store", module + "/internal/keyprovider", module + "/internal/audit",
	module + "/internal/signerr", module + "/internal/server", module + "/internal/signing"}

// The sidecar binary, the example core and the sigstore KMS plugin link no
// server-side package, so not even a bug could make them reach keys or the
// audit log; the fixture in internal/nomaterial proves the check fails when
// one does.
func TestCoreBinaryLinksNoServerCode(t *testing.T) {
	linked, err := nomaterial.Imports(repoRoot(t), serverSide, "./cmd/plexsphere-sidecar", "./examples/core", "./client/...", "./sidecar/...", "./cmd/sigstore-kms-plexsphere")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range linked {
		t.Error(l)
	}
	// Not vacuous: the signer links all of it.
	linked, err = nomaterial.Imports(repoRoot(t), serverSide, "./cmd/plexsphere-signer")
	if err != nil {
		t.Fatal(err)
	}
	if len(linked) == 0 {
		t.Fatal("the signer links no server-side package: the check sees nothing")
	}
}

// Storage and key providers do not depend on the wire: no gRPC, no
// generated proto in their import graphs (the mapping of their errors to
// codes and reasons lives with the gRPC layer, internal/signing/errors.go).
func TestStorageLinksNoWireCode(t *testing.T) {
	t.Setenv("GOFLAGS", "-tags=pkcs11") // the HSM provider too
	wire := []string{"google.golang.org/grpc", module + "/proto"}
	linked, err := nomaterial.Imports(repoRoot(t), wire, "./internal/store/...", "./internal/keyprovider/...")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range linked {
		t.Error(l)
	}
	// Not vacuous: the signing layer links both.
	if linked, err = nomaterial.Imports(repoRoot(t), wire, "./internal/signing"); err != nil || len(linked) == 0 {
		t.Fatalf("internal/signing links no wire code (%v): the check sees nothing", err)
	}
}

// The checks are not vacuous: the signer itself does hold keys.
func TestNoMaterialCheckFlagsTheSigner(t *testing.T) {
	findings, _, err := nomaterial.Scan(repoRoot(t), "./cmd/plexsphere-signer")
	if err != nil {
		t.Fatal(err)
	}
	if len(findings) == 0 {
		t.Fatal("the signer's graph has private keys (the local provider), but the check found none")
	}
}
