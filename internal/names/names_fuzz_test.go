package names_test

import (
	"strings"
	"testing"

	"github.com/plexsphere/signer/internal/names"
)

// Names end up in audit objects ("signing-key:<scope>:<key_id>"), metric
// labels and JWKS: an accepted name is short and separator-free.
func FuzzNames(f *testing.F) {
	for _, s := range []string{"payments", "a", "A.b_c-1", "", ":", "signing-key:x:y", "a/b", "ü", strings.Repeat("a", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, c := range []struct {
			check func(string) error
			max   int
		}{{names.CheckScope, names.MaxScopeLen}, {names.CheckKeyID, names.MaxKeyIDLen}} {
			if c.check(s) != nil {
				continue
			}
			if len(s) == 0 || len(s) > c.max || strings.ContainsAny(s, ":/ \n\x00%") {
				t.Fatalf("accepted %q", s)
			}
			for _, r := range s {
				if r > 127 {
					t.Fatalf("accepted non-ASCII %q", s)
				}
			}
		}
	})
}
