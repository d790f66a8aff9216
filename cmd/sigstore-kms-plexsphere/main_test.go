package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sigstore/sigstore/pkg/cryptoutils"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/testing/proctest"
	"github.com/plexsphere/signer/internal/testing/signertest"
	"github.com/plexsphere/signer/internal/testing/testenv"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

var pluginBin string

func TestMain(m *testing.M) { proctest.Main(m, "./cmd/sigstore-kms-plexsphere", &pluginBin) }

// cosignBin finds cosign: $COSIGN_BIN, else bin/ of the repository (make
// cosign builds it from tools/cosign).
func cosignBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("COSIGN_BIN")
	if bin == "" {
		wd, _ := os.Getwd()
		for d := wd; d != "/"; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil && !strings.Contains(d, "tools") {
				bin = filepath.Join(d, "bin", "cosign")
				break
			}
		}
	}
	if _, err := os.Stat(bin); err != nil {
		testenv.Require(t, "cosign", fmt.Sprintf("cosign not found at %s: run `make cosign`", bin))
	}
	return bin
}

// rig is a real signer, a real sidecar in front of it over mTLS with the
// core's identity, and a client of that sidecar to check what cosign did.
type rig struct {
	signer  *signertest.Env
	sidecar *signertest.Sidecar
	core    *client.Client
	dir     string
	env     []string // cosign's environment: the plugin on PATH, the sidecar, nothing of the host's
}

func start(t *testing.T, opts ...signertest.Option) *rig {
	t.Helper()
	s := signertest.Start(t, opts...)
	sc := signertest.StartSidecar(t, s.Addr, s.Source(s.Issue(t, signertest.CoreID)))
	c, err := client.Dial(context.Background(), sc.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	dir := t.TempDir()
	home := filepath.Join(dir, "home")
	os.Mkdir(home, 0o700)
	return &rig{signer: s, sidecar: sc, core: c, dir: dir, env: []string{
		"PATH=" + filepath.Dir(pluginBin) + ":/usr/bin:/bin",
		"HOME=" + home,
		"PLEXSPHERE_SIDECAR_ADDR=" + sc.Socket,
	}}
}

// cosign runs cosign with args; it returns stdout, stderr and the error.
func (r *rig) cosign(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, cosignBin(t), args...)
	cmd.Env, cmd.Dir = r.env, r.dir
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	t.Logf("$ cosign %s\n%s%s(exit: %v)", strings.Join(args, " "), out.String(), errOut.String(), err)
	return out.String(), errOut.String(), err
}

func (r *rig) mustCosign(t *testing.T, args ...string) (string, string) {
	t.Helper()
	out, errOut, err := r.cosign(t, args...)
	if err != nil {
		t.Fatalf("cosign %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out, errOut
}

func (r *rig) write(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(r.dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// active is the scope's ACTIVE key as the signer publishes it.
func (r *rig) active(t *testing.T, scope string) client.PublicKey {
	t.Helper()
	keys, err := r.core.PublicKeys(context.Background(), scope)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.State == signerv1.KeyState_KEY_STATE_ACTIVE {
			return k
		}
	}
	t.Fatalf("scope %s has no ACTIVE key: %+v", scope, keys)
	return client.PublicKey{}
}

// exportKey runs cosign public-key through the plugin and checks it is the
// signer's ACTIVE key; it returns the PEM file's path.
func (r *rig) exportKey(t *testing.T) string {
	t.Helper()
	pemFile := filepath.Join(r.dir, "payments.pub")
	r.mustCosign(t, "public-key", "--key", "plexsphere://"+signertest.Scope, "--outfile", pemFile)
	raw, err := os.ReadFile(pemFile)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(raw)
	if err != nil {
		t.Fatalf("cosign's exported key: %v\n%s", err, raw)
	}
	active := r.active(t, signertest.Scope)
	if !active.Key.Equal(pub) {
		t.Fatalf("cosign exported %x, the signer's ACTIVE key is %x", pub, active.Key)
	}
	if r.signer.JWKSURL != "" {
		if x := jwksKey(t, r.signer, signertest.Scope, active.KeyID); !bytes.Equal(x, active.Key) {
			t.Fatalf("the signer's JWKS has %x for %s, cosign exported %x", x, active.KeyID, pub)
		}
	}
	return pemFile
}

// jwksKey is key kid's public key as the signer's HTTPS JWKS endpoint
// publishes it.
func jwksKey(t *testing.T, s *signertest.Env, scope, kid string) []byte {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.JWKSRoots}}}
	resp, err := hc.Get(s.JWKSURL + "/scopes/" + scope + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var set struct {
		Keys []struct{ Kty, Crv, Kid, X string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("JWKS: %s %v", resp.Status, err)
	}
	for _, k := range set.Keys {
		if k.Kid == kid && k.Kty == "OKP" && k.Crv == "Ed25519" {
			x, err := base64.RawURLEncoding.DecodeString(k.X)
			if err != nil {
				t.Fatal(err)
			}
			return x
		}
	}
	t.Fatalf("the JWKS has no Ed25519 key %s: %+v", kid, set.Keys)
	return nil
}

var requestLine = regexp.MustCompile(`plexsphere: signed \((Ed25519|Ed25519ph)\) with scope (\S+) key (\S+), request id ([0-9a-f]{32}) \(prove: signerctl audit prove ([0-9a-f]{32})\)`)

// requestID finds the plugin's line in cosign's stderr and checks the
// signer's audit log holds that request's granted sign entry over payload
// (its SHA-256), made with keyID, and that the sidecar proves it.
func (r *rig) requestID(t *testing.T, stderr string, payloadSHA256 []byte, keyID string) string {
	t.Helper()
	m := requestLine.FindAllStringSubmatch(stderr, -1)
	if len(m) != 1 {
		t.Fatalf("want one plugin line naming the request id in cosign's stderr, got %d:\n%s", len(m), stderr)
	}
	id := m[0][4]
	if m[0][5] != id || m[0][2] != signertest.Scope || m[0][3] != keyID {
		t.Fatalf("plugin line %q: want scope %s, key %s, the same id twice", m[0][0], signertest.Scope, keyID)
	}
	var found bool
	for _, e := range r.signer.Audit(t) {
		if e.RequestID.String() != id || e.Relation != "sign" {
			continue
		}
		found = true
		if e.Reason != "granted" || e.Object != "signing-key:"+signertest.Scope+":"+keyID || !bytes.Equal(e.PayloadSHA256, payloadSHA256) {
			t.Fatalf("audit entry of %s: reason %s object %s payload sha256 %x; want granted, key %s, %x", id, e.Reason, e.Object, e.PayloadSHA256, keyID, payloadSHA256)
		}
	}
	if !found {
		t.Fatalf("request %s is not in the signer's audit log", id)
	}
	proofs, err := r.core.Prove(context.Background(), id)
	if err != nil || len(proofs) == 0 {
		t.Fatalf("prove %s: %v (%d proofs)", id, err, len(proofs))
	}
	return id
}

// cosign sign-blob through the plugin, then cosign verify-blob with the
// exported PEM (the signer's ACTIVE key, as its PublicKey RPC and its JWKS
// endpoint publish it): the signature verifies, a tampered blob does not, and the
// request the plugin names is the audit log's granted sign entry over the
// blob.
func TestCosignSignBlob(t *testing.T) {
	r := start(t, signertest.WithJWKS())
	pemFile := r.exportKey(t)
	blob := make([]byte, 1000)
	rand.Read(blob)
	blobFile := r.write(t, "blob", blob)
	sigFile := filepath.Join(r.dir, "blob.sig")
	_, errOut := r.mustCosign(t, "sign-blob", "--key", "plexsphere://"+signertest.Scope, "--tlog-upload=false",
		"--use-signing-config=false", "--new-bundle-format=false", "--output-signature", sigFile, "--yes", blobFile)
	sum := sha256.Sum256(blob)
	r.requestID(t, errOut, sum[:], r.active(t, signertest.Scope).KeyID)

	// The signature is pure Ed25519 over the blob: any Ed25519 verifier
	// with the signer's key accepts it.
	b64, err := os.ReadFile(sigFile)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b64)))
	if err != nil {
		t.Fatalf("signature file: %v", err)
	}
	if !ed25519.Verify(r.active(t, signertest.Scope).Key, blob, sig) {
		t.Fatal("the signature cosign wrote does not verify with ed25519.Verify")
	}

	out, errOut := r.mustCosign(t, "verify-blob", "--key", pemFile, "--signature", sigFile, "--insecure-ignore-tlog=true",
		"--use-signed-timestamps=false", blobFile)
	if !strings.Contains(out+errOut, "Verified OK") {
		t.Fatalf("verify-blob: no Verified OK:\n%s%s", out, errOut)
	}
	// The same through the plugin, which verifies with the published keys.
	if out, errOut = r.mustCosign(t, "verify-blob", "--key", "plexsphere://"+signertest.Scope, "--signature", sigFile,
		"--insecure-ignore-tlog=true", blobFile); !strings.Contains(out+errOut, "Verified OK") {
		t.Fatalf("verify-blob through the plugin: no Verified OK:\n%s%s", out, errOut)
	}

	tampered := append([]byte(nil), blob...)
	tampered[0] ^= 1
	tamperedFile := r.write(t, "tampered", tampered)
	for _, key := range []string{pemFile, "plexsphere://" + signertest.Scope} {
		out, errOut, err := r.cosign(t, "verify-blob", "--key", key, "--signature", sigFile, "--insecure-ignore-tlog=true", tamperedFile)
		if err == nil || strings.Contains(out+errOut, "Verified OK") {
			t.Fatalf("verify-blob --key %s of a tampered blob succeeded:\n%s%s", key, out, errOut)
		}
	}
}

// A blob larger than the signer's payload limit, an unknown scope, a
// malformed reference and key creation: cosign fails and says why.
func TestCosignRefusals(t *testing.T) {
	r := start(t)
	before := len(r.signer.Audit(t))
	big := r.write(t, "big", make([]byte, 64<<10+1))
	small := r.write(t, "small", []byte("hello"))
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"payload over the limit", []string{"sign-blob", "--key", "plexsphere://payments", "--tlog-upload=false", "--use-signing-config=false", "--new-bundle-format=false", "--yes", big},
			[]string{"the message is 65537 bytes", "must be at most 65536 bytes", "SIGNER_MAX_PAYLOAD_BYTES"}},
		{"unknown scope", []string{"sign-blob", "--key", "plexsphere://nope", "--tlog-upload=false", "--use-signing-config=false", "--new-bundle-format=false", "--yes", small},
			[]string{`scope "nope" is unknown to the signer or has no key`, "signerctl rotate open --create nope"}},
		{"malformed reference", []string{"sign-blob", "--key", "plexsphere://payments/v1", "--tlog-upload=false", "--use-signing-config=false", "--new-bundle-format=false", "--yes", small},
			[]string{`key reference "payments/v1": want plexsphere://<scope>`}},
		{"image, Ed25519ph not allowed", []string{"sign", "--key", "plexsphere://payments", "--tlog-upload=false", "--use-signing-config=false", "--allow-insecure-registry", "--allow-http-registry", "--yes", registryImage(t)},
			[]string{`the signer refused Ed25519ph for scope "payments"`, "payments=ed25519ph in SIGNER_SCOPE_SIGN_VARIANTS"}},
		{"key creation", []string{"generate-key-pair", "--kms", "plexsphere://payments"},
			[]string{"keys are created in the signer by rotation", "signerctl rotate open --create payments"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := r.cosign(t, tc.args...)
			if err == nil {
				t.Fatalf("cosign succeeded:\n%s%s", out, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("cosign's error lacks %q:\n%s", w, errOut)
				}
			}
		})
	}
	// Refused, so nothing signed: the over-limit payload's entry says
	// InvalidArgument; no granted sign entry.
	for _, e := range r.signer.Audit(t)[before:] {
		if e.Relation == "sign" && e.Reason == "granted" {
			t.Errorf("a refused cosign run left a granted sign entry: %+v", e)
		}
	}
}

// The sigstore library loads the plugin from PATH (kms.Get), as cosign
// does, and its signatures verify with the standard library.
func TestSigstoreLoadsPlugin(t *testing.T) {
	r := start(t, signertest.WithConfig(phScopes))
	for _, kv := range r.env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	testSigstore(t, r)
}

// registry runs an OCI registry on 127.0.0.1 and pushes a random image;
// it returns the image's digest reference.
func registryImage(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(srv.URL, "http://")
	tag, err := name.ParseReference(host+"/plexsphere/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return host + "/plexsphere/app@" + d.String()
}

// phScopes lets payments and billing sign Ed25519ph, as cosign signs images.
func phScopes(c *config.Signer) {
	c.BootstrapScopes = []string{signertest.Scope, "billing"}
	c.ScopeSignVariants = []string{signertest.Scope + "=ed25519ph", "billing=ed25519ph"}
}

// cosign sign of an image in a registry through the plugin, then cosign
// verify through the plugin: cosign v3.1.3 signs an image with an Ed25519
// key as Ed25519ph (its image path keeps that default whatever
// --tlog-upload says) but verifies a PEM Ed25519 key as pure Ed25519, so
// cosign verify --key <PEM> refuses its own Ed25519 signatures (a local
// cosign key too: docs/cosign.md); the plugin verifies either scheme.
func TestCosignSignImage(t *testing.T) {
	r := start(t, signertest.WithConfig(phScopes))
	ref := registryImage(t)
	unsigned := registryImage(t)
	key := r.active(t, signertest.Scope)
	_, errOut := r.mustCosign(t, "sign", "--key", "plexsphere://"+signertest.Scope, "--tlog-upload=false",
		"--use-signing-config=false", "--allow-insecure-registry", "--allow-http-registry", "--yes", ref)
	m := requestLine.FindStringSubmatch(errOut)
	if m == nil || m[1] != "Ed25519ph" || m[3] != key.KeyID {
		t.Fatalf("want the plugin's Ed25519ph line with key %s in cosign sign's stderr:\n%s", key.KeyID, errOut)
	}
	var found bool
	for _, e := range r.signer.Audit(t) {
		if e.RequestID.String() == m[4] && e.Relation == "sign" {
			found = true
			if e.Reason != "granted" || e.SignVariant != auditlog.VariantEd25519ph || e.Object != "signing-key:"+signertest.Scope+":"+key.KeyID {
				t.Fatalf("audit entry of %s: reason %s variant %q object %s", m[4], e.Reason, e.SignVariant, e.Object)
			}
		}
	}
	if !found {
		t.Fatalf("request %s is not in the audit log", m[4])
	}
	if proofs, err := r.core.Prove(context.Background(), m[4]); err != nil || len(proofs) == 0 {
		t.Fatalf("prove %s: %v", m[4], err)
	}

	out, errOut := r.mustCosign(t, "verify", "--key", "plexsphere://"+signertest.Scope, "--insecure-ignore-tlog=true",
		"--allow-insecure-registry", "--allow-http-registry", ref)
	if !strings.Contains(errOut, "The signatures were verified against the specified public key") || !strings.Contains(out, ref[strings.Index(ref, "@")+1:]) {
		t.Fatalf("cosign verify did not verify:\n%s%s", out, errOut)
	}
	// Another scope's key does not verify it, and an image nobody signed
	// has no signature.
	for _, tc := range [][2]string{{"plexsphere://billing", ref}, {"plexsphere://" + signertest.Scope, unsigned}} {
		if out, errOut, err := r.cosign(t, "verify", "--key", tc[0], "--insecure-ignore-tlog=true",
			"--allow-insecure-registry", "--allow-http-registry", tc[1]); err == nil {
			t.Fatalf("cosign verify --key %s %s succeeded:\n%s%s", tc[0], tc[1], out, errOut)
		}
	}
}
