package kmsplugin

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/kms/cliplugin/common"
	"github.com/sigstore/sigstore/pkg/signature/options"
)

func TestParseRef(t *testing.T) {
	for ref, want := range map[string]string{"plexsphere://payments": "payments", "payments": "payments", "a.b-c_d": "a.b-c_d"} {
		if got, err := ParseRef(ref); err != nil || got != want {
			t.Errorf("ParseRef(%q) = %q, %v; want %q", ref, got, err, want)
		}
	}
	for _, ref := range []string{"", "plexsphere://", "plexsphere://payments/key", "payments?x=1", "other://payments"} {
		if _, err := ParseRef(ref); err == nil || !strings.Contains(err.Error(), "want plexsphere://<scope>") {
			t.Errorf("ParseRef(%q): %v", ref, err)
		}
	}
}

// The message options sigstore and cosign send, and what each means.
func TestInput(t *testing.T) {
	msg := []byte("the message")
	d512 := sha512.Sum512(msg)
	d256 := sha256.Sum256(msg)
	for _, tc := range []struct {
		name string
		opts []signature.MessageOption
		mode mode
		data []byte
		err  string
	}{
		{"cosign without a tlog: the message", nil, pure, msg, ""},
		{"crypto.Signer with hash 0: the digest is the message", []signature.MessageOption{options.WithDigest(msg), options.WithCryptoSignerOpts(crypto.Hash(0))}, pure, msg, ""},
		{"cosign with a tlog: a SHA-512 digest", []signature.MessageOption{options.WithDigest(d512[:])}, ph, d512[:], ""},
		{"SHA-512 digest and hash", []signature.MessageOption{options.WithDigest(d512[:]), options.WithCryptoSignerOpts(crypto.SHA512)}, ph, d512[:], ""},
		{"SHA-512 without a digest: hashed here", []signature.MessageOption{options.WithCryptoSignerOpts(crypto.SHA512)}, ph, d512[:], ""},
		{"SHA-256 refused", []signature.MessageOption{options.WithDigest(d256[:]), options.WithCryptoSignerOpts(crypto.SHA256)}, 0, nil, "SHA-512 only"},
		{"a 32-byte digest refused", []signature.MessageOption{options.WithDigest(d256[:])}, 0, nil, "a 32-byte digest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, data, err := input(bytes.NewReader(msg), tc.opts)
			if tc.err != "" {
				if !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || m != tc.mode || !bytes.Equal(data, tc.data) {
				t.Fatalf("mode %d data %x err %v; want mode %d data %x", m, data, err, tc.mode, tc.data)
			}
		})
	}
}

// Invocations that never reach the sidecar: each answers an errorMessage
// on stdout, as the protocol wants, naming what is wrong.
func TestMainRefusesBadInvocations(t *testing.T) {
	args := func(ref string) string {
		b, _ := json.Marshal(common.PluginArgs{InitOptions: &common.InitOptions{ProtocolVersion: "v1", KeyResourceID: ref},
			MethodArgs: &common.MethodArgs{MethodName: common.DefaultAlgorithmMethodName, DefaultAlgorithm: &common.DefaultAlgorithmArgs{}}})
		return string(b)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"run by hand", []string{"sigstore-kms-plexsphere"}, "run by cosign as --key plexsphere://<scope>"},
		{"another protocol", []string{"sigstore-kms-plexsphere", "v2", args("payments")}, `protocol "v2" is not supported`},
		{"bad reference", []string{"sigstore-kms-plexsphere", "v1", args("payments/x")}, `key reference "payments/x"`},
		{"not JSON", []string{"sigstore-kms-plexsphere", "v1", "{"}, "plexsphere:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(context.Background(), tc.args, strings.NewReader(""), &out, &errOut, func(string) string { return "" })
			var resp common.PluginResp
			if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
				t.Fatalf("stdout is not a plugin response: %q", out.String())
			}
			if code == 0 || !strings.Contains(resp.ErrorMessage, tc.want) {
				t.Fatalf("exit %d, error %q; want %q", code, resp.ErrorMessage, tc.want)
			}
		})
	}
}

// A call without the option structs a sigstore client always sends (as
// someone might write by hand) is an error response, not a crash of the
// handler that reads them.
func TestMainAnswersMalformedArguments(t *testing.T) {
	b, _ := json.Marshal(common.PluginArgs{InitOptions: &common.InitOptions{ProtocolVersion: "v1", KeyResourceID: "payments"},
		MethodArgs: &common.MethodArgs{MethodName: common.PublicKeyMethodName, PublicKey: &common.PublicKeyArgs{}}})
	var out bytes.Buffer
	code := Main(context.Background(), []string{"p", "v1", string(b)}, strings.NewReader(""), &out, &bytes.Buffer{},
		func(k string) string { return map[string]string{EnvSidecar: "unix:///nonexistent/plexsphere.sock"}[k] })
	var resp common.PluginResp
	if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
		t.Fatalf("stdout is not a plugin response: %q", out.String())
	}
	if code == 0 || !strings.Contains(resp.ErrorMessage, `malformed arguments for method "publicKey"`) {
		t.Fatalf("exit %d, error %q", code, resp.ErrorMessage)
	}
}

// A sidecar target that is not local is refused before anything is sent:
// the client only talks to a Unix socket or loopback.
func TestMainRefusesARemoteSidecar(t *testing.T) {
	b, _ := json.Marshal(common.PluginArgs{InitOptions: &common.InitOptions{ProtocolVersion: "v1", KeyResourceID: "payments"},
		MethodArgs: &common.MethodArgs{MethodName: common.PublicKeyMethodName, PublicKey: &common.PublicKeyArgs{PublicKeyOptions: &common.PublicKeyOptions{}}}})
	var out bytes.Buffer
	code := Main(context.Background(), []string{"p", "v1", string(b)}, strings.NewReader(""), &out, &bytes.Buffer{},
		func(k string) string { return map[string]string{EnvSidecar: "signer.example.com:443"}[k] })
	var resp common.PluginResp
	json.Unmarshal(out.Bytes(), &resp)
	if code == 0 || !strings.Contains(resp.ErrorMessage, EnvSidecar+`="signer.example.com:443"`) {
		t.Fatalf("exit %d, error %q", code, resp.ErrorMessage)
	}
}
