package nomaterial_test

import (
	"strings"
	"testing"

	"github.com/plexsphere/signer/internal/nomaterial"
)

// Each fixture plants one kind of violation; the check must find it in the
// planted package and nowhere else.
func TestFixtures(t *testing.T) {
	for _, tc := range []struct {
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
	} {
		t.Run(tc.root, func(t *testing.T) {
			findings, checked, err := nomaterial.Scan("testdata/fixture", tc.root)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range checked {
				if strings.HasPrefix(p, "example.com/othermod") {
					t.Fatalf("checked a package of another module: %s", p)
				}
			}
			var got []string
			for _, f := range findings {
				got = append(got, strings.TrimPrefix(f.Package, "example.com/")+": "+f.What)
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
