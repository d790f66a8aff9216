package nomaterial_test

import (
	"strings"
	"testing"

	"github.com/plexsphere/signer/internal/nomaterial"
)

// Each fixture plants one kind of violation; the check must find it in the
// planted package and nowhere else.
func TestFixtures(t *testing.T) {
	cases := []struct {
		root string
		want []string // "package: what" substrings, one finding at least each
	}{
		{"./clean", nil},
		{"./testonly", nil},
		{"./direct", []string{"fixture/direct: declares Keep"}},
		{"./renamed", []string{"fixture/renamed: names ed25519.PrivateKey"}},
		{"./aliasuse", []string{"fixture/aliasdef: names ed25519.PrivateKey", "fixture/aliasuse: holds a value"}},
		{"./foreignalias", []string{"fixture/foreignalias: declares k of type ed25519.PrivateKey"}},
		{"./generate", []string{"fixture/generate: uses ed25519.GenerateKey"}},
		{"./seed", []string{"fixture/seed: uses ed25519.NewKeyFromSeed"}},
		{"./funcvalue", []string{"fixture/funcvalue: uses ed25519.GenerateKey"}},
		{"./transitive/cmd", []string{"fixture/transitive/lib: declares Secret"}},
	}
	// One load for all roots (each load type-checks; one is enough), then
	// findings are attributed per planted package.
	var roots []string
	for _, tc := range cases {
		roots = append(roots, tc.root)
	}
	findings, checked, err := nomaterial.Scan("testdata/fixture", roots...)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range checked {
		if strings.HasPrefix(p, "example.com/othermod") {
			t.Fatalf("checked a package of another module: %s", p)
		}
	}
	byPkg := map[string][]string{}
	for _, f := range findings {
		pkg := strings.TrimPrefix(f.Package, "example.com/fixture/")
		byPkg[pkg] = append(byPkg[pkg], "fixture/"+pkg+": "+f.What)
	}
	for _, tc := range cases {
		t.Run(tc.root, func(t *testing.T) {
			var got []string
			for _, w := range tc.want {
				pkg, _, _ := strings.Cut(strings.TrimPrefix(w, "fixture/"), ":")
				got = append(got, byPkg[pkg]...)
			}
			if len(tc.want) == 0 {
				got = byPkg[strings.TrimPrefix(tc.root, "./")]
			}
			if len(tc.want) == 0 && len(got) > 0 {
				t.Fatalf("clean fixture flagged: %v", got)
			}
			for _, w := range tc.want {
				found := false
				for _, g := range got {
					found = found || strings.HasPrefix(g, w)
				}
				if !found {
					t.Errorf("missing finding %q; got %v", w, got)
				}
			}
		})
	}
}

// The import-graph check finds server-side code however deep it is linked,
// names the chain, and passes a binary that does not link it.
func TestImportsFixture(t *testing.T) {
	got, err := nomaterial.Imports("testdata/fixture", []string{"example.com/fixture/server"}, "./leakycmd", "./clean")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Root != "example.com/fixture/leakycmd" || got[0].Package != "example.com/fixture/server/store" ||
		strings.Join(got[0].Via, " ") != "example.com/fixture/leakycmd example.com/fixture/leaky example.com/fixture/server/store" {
		t.Fatalf("findings = %v", got)
	}
}
