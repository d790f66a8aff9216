package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/keyprovider/local"
)

// The multi-part settings parse without panicking, and what they accept
// keeps their rules.
func FuzzSignerSettings(f *testing.F) {
	f.Add("payments:720h:1h:48h", "spiffe://td/core=payments", "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
	f.Add("a:1m:5m:1h", "spiffe://td/core=*", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
	f.Add(":::", "=", "")
	f.Fuzz(func(t *testing.T, auto, grant, kek string) {
		c := config.Signer{AllowSPIFFEIDs: []string{"spiffe://td/core"}, PrePublish: time.Minute, VerifyOnly: time.Minute,
			AutoRotate: strings.Split(auto, ","), ScopeGrants: strings.Split(grant, ",")}
		if rs, err := c.AutoRotations(); err == nil {
			for _, r := range rs {
				if r.PrePublish < c.PrePublish || r.VerifyOnly < c.VerifyOnly || r.Period <= r.PrePublish {
					t.Fatalf("accepted %+v", r)
				}
			}
		}
		if g, err := c.Grants(); err == nil {
			for id := range g {
				if id != "spiffe://td/core" {
					t.Fatalf("granted %q, not on the allow-list", id)
				}
			}
		}
		if b, err := local.ParseKEK(kek); err == nil && len(b) != 32 {
			t.Fatalf("KEK of %d bytes", len(b))
		}
	})
}
