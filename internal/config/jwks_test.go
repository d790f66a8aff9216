package config_test

import (
	"strings"
	"testing"
)

// The JWKS endpoint's settings: each mistake names its setting; a valid
// set passes.
func TestJWKSSettings(t *testing.T) {
	on := []string{"--jwks-listen", ":8444", "--jwks-cert", "/tls/tls.crt", "--jwks-key", "/tls/tls.key"}
	for _, tc := range []struct {
		name string
		args []string
		want string // "" = valid
	}{
		{"off", nil, ""},
		{"on", on, ""},
		{"on with issuer", append(on, "--jwks-issuer-url", "https://keys.example.com/"), ""},
		{"no certificate", []string{"--jwks-listen", ":8444"}, "--jwks-cert / SIGNER_JWKS_CERT_FILE"},
		{"no key", []string{"--jwks-listen", ":8444", "--jwks-cert", "/tls/tls.crt"}, "--jwks-cert / SIGNER_JWKS_CERT_FILE"},
		{"bad address", []string{"--jwks-listen", "8444", "--jwks-cert", "/a", "--jwks-key", "/b"}, "--jwks-listen / SIGNER_JWKS_LISTEN"},
		{"certificate while off", []string{"--jwks-cert", "/tls/tls.crt"}, "--jwks-cert / SIGNER_JWKS_CERT_FILE"},
		{"issuer while off", []string{"--jwks-issuer-url", "https://keys.example.com"}, "--jwks-issuer-url / SIGNER_JWKS_ISSUER_URL"},
		{"plain http issuer", append(on, "--jwks-issuer-url", "http://keys.example.com"), "--jwks-issuer-url / SIGNER_JWKS_ISSUER_URL"},
		{"issuer with query", append(on, "--jwks-issuer-url", "https://keys.example.com/?a=b"), "--jwks-issuer-url / SIGNER_JWKS_ISSUER_URL"},
		{"zero rate", append(on, "--jwks-rate", "0"), "--jwks-rate / SIGNER_JWKS_RATE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			valid(t)
			_, err := load(t, tc.args...)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid settings refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want it to name %q", err, tc.want)
			}
		})
	}
}
