package server_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/internal/config"
	"github.com/plexsphere/signer/internal/jwks"
	"github.com/plexsphere/signer/internal/store"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// httpsClient trusts only the JWKS endpoint's certificate and presents no
// client certificate: the endpoint must not need one.
func httpsClient(env *signertest.Env) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: env.JWKSRoots, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true}}
}

// fetchSet fetches a scope's JWKS over HTTPS and parses it with go-jose, as
// a verifier that caches the set would.
func fetchSet(t *testing.T, hc *http.Client, url string) (jose.JSONWebKeySet, *http.Response) {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", url, resp.Status, body)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(body, &set); err != nil {
		t.Fatalf("go-jose cannot parse the set: %v\n%s", err, body)
	}
	return set, resp
}

func kids(set jose.JSONWebKeySet) []string {
	var out []string
	for _, k := range set.Keys {
		out = append(out, k.KeyID)
	}
	return out
}

// signToken signs a JWT with golang-jwt through the sidecar (client.Signer),
// kid = the signer's key id.
func signToken(t *testing.T, s *client.ScopeSigner, issuer string) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, jwt.RegisteredClaims{Issuer: issuer, Subject: "order-42",
		Audience: jwt.ClaimStrings{"shop"}, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))})
	tok.Header["kid"] = s.KeyID()
	signed, err := tok.SignedString(s)
	if err != nil {
		t.Fatal(err)
	}
	return signed
}

// verifyWithSet verifies a token against a set held offline (go-jose), by
// its kid, as a verifier with a cached set does.
func verifyWithSet(set jose.JSONWebKeySet, token string) error {
	jws, err := jose.ParseSigned(token, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		return err
	}
	keys := set.Key(jws.Signatures[0].Header.KeyID)
	if len(keys) != 1 {
		return jose.ErrJWKSKidNotFound
	}
	_, err = jws.Verify(keys[0].Key)
	return err
}

// A third-party OIDC verifier (coreos/go-oidc over go-jose) discovers the
// scope's issuer, fetches its JWKS over HTTPS and verifies golang-jwt tokens
// signed through the sidecar, across a rotation: the PENDING key is in the
// set before it can sign (a set cached before Commit verifies the first
// token of the new key), and the old key stays while it is PREVIOUS.
func TestJWKSEndpointVerifiesTokensAcrossRotation(t *testing.T) {
	const prePublish, cacheTTL = 10 * time.Minute, time.Second
	clock := signertest.NewClock(time.Now())
	env := signertest.Start(t, signertest.WithJWKS(), signertest.WithClock(clock), signertest.WithConfig(func(c *config.Signer) {
		c.PrePublish, c.KeyCacheTTL = prePublish, cacheTTL
	}))
	ctx := context.Background()
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)))
	cl, err := client.Dial(ctx, sc.Socket, client.WithClock(clock.Now), client.WithCacheTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	hc := httpsClient(env)
	issuer := env.JWKSURL + "/scopes/" + scope
	setURL := issuer + "/.well-known/jwks.json"

	provider, err := oidc.NewProvider(oidc.ClientContext(ctx, hc), issuer)
	if err != nil {
		t.Fatalf("OIDC discovery: %v", err)
	}
	var disc struct {
		JWKSURI string   `json:"jwks_uri"`
		Algs    []string `json:"id_token_signing_alg_values_supported"`
	}
	if err := provider.Claims(&disc); err != nil || disc.JWKSURI != setURL || len(disc.Algs) != 1 || disc.Algs[0] != "EdDSA" {
		t.Fatalf("discovery document: %+v %v, want jwks_uri %s and EdDSA", disc, err, setURL)
	}
	verifier := provider.Verifier(&oidc.Config{ClientID: "shop", SupportedSigningAlgs: []string{oidc.EdDSA}})

	first := cl.Signer(scope)
	oldKey := first.KeyID()
	tok1 := signToken(t, first, issuer)
	if _, err := verifier.Verify(ctx, tok1); err != nil {
		t.Fatalf("go-oidc refuses a token of the ACTIVE key: %v", err)
	}
	// A token for another issuer, or with a flipped signature bit, is
	// refused: the verifier really checks.
	if _, err := verifier.Verify(ctx, signToken(t, first, env.JWKSURL+"/scopes/other")); err == nil {
		t.Fatal("go-oidc accepted a token of another issuer")
	}
	bad := []byte(tok1)
	bad[len(bad)-2] ^= 'A' ^ 'B'
	if _, err := verifier.Verify(ctx, string(bad)); err == nil {
		t.Fatal("go-oidc accepted a tampered token")
	}

	// Open: the PENDING key is published within the key-cache TTL.
	op := signerv1.NewRotationServiceClient(env.Dial(t, env.Issue(t, signertest.OperatorID)))
	opened, err := op.Open(ctx, &signerv1.OpenRequest{Scope: scope})
	if err != nil {
		t.Fatal(err)
	}
	pending := opened.GetKey().GetKeyId()
	clock.Advance(cacheTTL)
	cached, resp := fetchSet(t, hc, setURL)
	if got := kids(cached); len(got) != 2 || len(cached.Key(oldKey)) != 1 || len(cached.Key(pending)) != 1 {
		t.Fatalf("set after Open = %v, want the ACTIVE %s and the PENDING %s", got, oldKey, pending)
	}
	wantAge := (prePublish - cacheTTL) / 2
	if cc := resp.Header.Get("Cache-Control"); cc != "public, max-age="+strconv.Itoa(int(wantAge/time.Second)) {
		t.Fatalf("Cache-Control = %q, want max-age %v", cc, wantAge)
	}
	if ct := resp.Header.Get("Content-Type"); ct != jwks.ContentType {
		t.Fatalf("Content-Type = %q", ct)
	}
	for _, k := range cached.Keys {
		if !k.Valid() || !k.IsPublic() || k.Algorithm != "EdDSA" || k.Use != "sig" {
			t.Fatalf("key %s: valid %v public %v alg %q use %q", k.KeyID, k.Valid(), k.IsPublic(), k.Algorithm, k.Use)
		}
	}

	// Commit after the pre-publication window; the new key signs.
	clock.Advance(prePublish)
	if _, err := op.Commit(ctx, &signerv1.CommitRequest{Scope: scope, KeyId: pending}); err != nil {
		t.Fatal(err)
	}
	second := cl.Signer(scope)
	if second.KeyID() != pending {
		t.Fatalf("signing key after Commit = %s, want %s", second.KeyID(), pending)
	}
	tok2 := signToken(t, second, issuer)
	// The set cached before Commit already verifies the new key's token:
	// no verifier has to miss it.
	if err := verifyWithSet(cached, tok2); err != nil {
		t.Fatalf("the set cached before Commit does not verify the new key's token: %v", err)
	}
	if _, err := verifier.Verify(ctx, tok2); err != nil {
		t.Fatalf("go-oidc refuses the new key's token: %v", err)
	}
	// The old key is PREVIOUS: still published, its token still verifies.
	clock.Advance(cacheTTL)
	after, _ := fetchSet(t, hc, setURL)
	if len(after.Key(oldKey)) != 1 || len(after.Key(pending)) != 1 {
		t.Fatalf("set after Commit = %v, want PREVIOUS %s and ACTIVE %s", kids(after), oldKey, pending)
	}
	if _, err := verifier.Verify(ctx, tok1); err != nil {
		t.Fatalf("go-oidc refuses the PREVIOUS key's token: %v", err)
	}

	// Retired: the old key leaves the set.
	clock.Advance(env.Config.VerifyOnly)
	if _, err := op.Retire(ctx, &signerv1.RetireRequest{Scope: scope, KeyId: oldKey}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(cacheTTL)
	if final, _ := fetchSet(t, hc, setURL); len(final.Keys) != 1 || len(final.Key(pending)) != 1 {
		t.Fatalf("set after Retire = %v, want only %s", kids(final), pending)
	}
	if err := verifyWithSet(func() jose.JSONWebKeySet { s, _ := fetchSet(t, hc, setURL); return s }(), tok1); err == nil {
		t.Fatal("the retired key's token still verifies against the published set")
	}
}

// The endpoint's HTTP contract: strong ETag and 304, HEAD, 404 with a JSON
// error that does not echo the request, 405, 429 with Retry-After, no
// client certificate needed, no discovery without an issuer.
func TestJWKSEndpointHTTPContract(t *testing.T) {
	env := signertest.Start(t, signertest.WithJWKS())
	hc := httpsClient(env)
	setURL := env.JWKSURL + "/scopes/" + scope + "/.well-known/jwks.json"
	do := func(method, url string, hdr map[string]string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, url, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	wantError := func(name string, resp *http.Response, body string, code int, errName string) {
		t.Helper()
		var e struct {
			Error string `json:"error"`
			Desc  string `json:"error_description"`
		}
		if resp.StatusCode != code || resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(body), &e) != nil || e.Error != errName {
			t.Fatalf("%s: %s %q %s, want %d %s", name, resp.Status, resp.Header.Get("Content-Type"), body, code, errName)
		}
	}

	resp, body := do("GET", setURL, nil)
	etag := resp.Header.Get("ETag")
	if resp.StatusCode != 200 || !strings.HasPrefix(etag, `"`) || strings.HasPrefix(etag, "W/") || resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		t.Fatalf("GET: %s ETag %q TLS %v", resp.Status, etag, resp.TLS != nil)
	}
	if !strings.Contains(body, `"kty":"OKP"`) || !strings.Contains(body, `"crv":"Ed25519"`) {
		t.Fatalf("body %s is not an OKP Ed25519 set", body)
	}
	for _, inm := range []string{etag, `"other", ` + etag, "W/" + etag, "*"} {
		r, b := do("GET", setURL, map[string]string{"If-None-Match": inm})
		if r.StatusCode != http.StatusNotModified || b != "" || r.Header.Get("ETag") != etag || r.Header.Get("Cache-Control") == "" {
			t.Fatalf("If-None-Match %s: %s %q ETag %q", inm, r.Status, b, r.Header.Get("ETag"))
		}
	}
	if r, _ := do("GET", setURL, map[string]string{"If-None-Match": `"stale"`}); r.StatusCode != 200 {
		t.Fatalf("a stale ETag: %s, want 200", r.Status)
	}
	if r, b := do("HEAD", setURL, nil); r.StatusCode != 200 || b != "" || r.Header.Get("ETag") != etag {
		t.Fatalf("HEAD: %s %q", r.Status, b)
	}
	probe := "nosuchscope-<script>"
	for name, url := range map[string]string{
		"unknown scope":   env.JWKSURL + "/scopes/nosuchscope/.well-known/jwks.json",
		"malformed scope": env.JWKSURL + "/scopes/" + strings.ReplaceAll(probe, "<", "%3C") + "/.well-known/jwks.json",
		"other path":      env.JWKSURL + "/.well-known/jwks.json?scope=" + scope,
		"nested":          env.JWKSURL + "/scopes/a/b/.well-known/jwks.json",
	} {
		r, b := do("GET", url, nil)
		wantError(name, r, b, 404, "not_found")
		if strings.Contains(b, "nosuchscope") || strings.Contains(b, "<script") || strings.Contains(b, "%3C") {
			t.Fatalf("%s: the error echoes the request: %s", name, b)
		}
	}
	// A scope whose only key was opened and aborted (RETIRED) publishes
	// nothing: 404, like the PublicKey RPC; while its key is PENDING, the
	// scope is published.
	op := signerv1.NewRotationServiceClient(env.Dial(t, env.Issue(t, signertest.OperatorID)))
	opened, err := op.Open(context.Background(), &signerv1.OpenRequest{Scope: "aborted"})
	if err != nil {
		t.Fatal(err)
	}
	abortedURL := env.JWKSURL + "/scopes/aborted/.well-known/jwks.json"
	if r, b := do("GET", abortedURL, nil); r.StatusCode != 200 || !strings.Contains(b, opened.GetKey().GetKeyId()) {
		t.Fatalf("a scope with a PENDING key: %s %s", r.Status, b)
	}
	if _, err := op.Abort(context.Background(), &signerv1.AbortRequest{Scope: "aborted", KeyId: opened.GetKey().GetKeyId()}); err != nil {
		t.Fatal(err)
	}
	env.Clock.Advance(env.Config.KeyCacheTTL)
	r, b := do("GET", abortedURL, nil)
	wantError("only RETIRED keys", r, b, 404, "not_found")

	r, b = do("POST", setURL, nil)
	wantError("POST", r, b, 405, "method_not_allowed")

	// WithJWKS sets an issuer: discovery is served; without one it is 404
	// (below).
	if r, b := do("GET", env.JWKSURL+"/scopes/"+scope+"/.well-known/openid-configuration", nil); r.StatusCode != 200 || !strings.Contains(b, `"issuer":"`+env.JWKSURL+"/scopes/"+scope+`"`) {
		t.Fatalf("discovery: %s %s", r.Status, b)
	}

	// Without an issuer there is no discovery document. At 1 request a
	// second (bursts of 2) from one address, a quick run of requests is
	// soon answered 429 with Retry-After; another address keeps its own budget.
	plain := signertest.Start(t, signertest.WithJWKS(), signertest.WithConfig(func(c *config.Signer) {
		c.JWKSIssuerURL, c.JWKSRate = "", 1
	}))
	get := func(hc *http.Client, url string) (*http.Response, string) {
		t.Helper()
		resp, err := hc.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp, string(body)
	}
	pc := httpsClient(plain)
	r, b = get(pc, plain.JWKSURL+"/scopes/"+scope+"/.well-known/openid-configuration")
	wantError("discovery without issuer", r, b, 404, "not_found")
	plainSet := plain.JWKSURL + "/scopes/" + scope + "/.well-known/jwks.json"
	r = nil
	for i := 0; i < 20 && (r == nil || r.StatusCode == 200); i++ {
		r, b = get(pc, plainSet)
	}
	wantError("rate limit", r, b, 429, "rate_limited")
	if s, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || s < 1 {
		t.Fatalf("Retry-After = %q", r.Header.Get("Retry-After"))
	}
	other := httpsClient(plain)
	other.Transport.(*http.Transport).DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext
	if r, b := get(other, plainSet); r.StatusCode != 200 {
		t.Fatalf("another source address is limited too: %s %s", r.Status, b)
	}

	metrics := scrape(t, env) + scrape(t, plain)
	for _, want := range []string{`plexsphere_signer_jwks_requests_total{code="200"}`, `plexsphere_signer_jwks_requests_total{code="304"}`,
		`plexsphere_signer_jwks_requests_total{code="404"}`, `plexsphere_signer_jwks_requests_total{code="405"}`,
		`plexsphere_signer_jwks_requests_total{code="429"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// scrape reads the signer's /metrics.
func scrape(t *testing.T, env *signertest.Env) string {
	t.Helper()
	rec := httptest.NewRecorder()
	env.Metrics.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	return rec.Body.String()
}

// keysDown fails Keys while down is set.
type keysDown struct {
	store.Store
	down *atomic.Bool
}

func (s keysDown) Keys(ctx context.Context, scope string) ([]store.Key, error) {
	if s.down.Load() {
		return nil, errors.New("postgres: connection refused to 10.0.0.7:5432 user=signer")
	}
	return s.Store.Keys(ctx, scope)
}

// A store that cannot be read is 503 with Retry-After and a JSON error
// that tells nothing of the store; the endpoint recovers with the store.
func TestJWKSEndpointStoreDown(t *testing.T) {
	down := new(atomic.Bool)
	env := signertest.Start(t, signertest.WithJWKS(), signertest.WithStore(keysDown{signertest.OpenBolt(t), down}))
	hc := httpsClient(env)
	setURL := env.JWKSURL + "/scopes/" + scope + "/.well-known/jwks.json"
	down.Store(true)
	resp, err := hc.Get(setURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || resp.Header.Get("Cache-Control") != "no-store" ||
		!strings.Contains(string(body), `"error":"temporarily_unavailable"`) {
		t.Fatalf("store down: %s Retry-After %q Cache-Control %q %s", resp.Status, resp.Header.Get("Retry-After"), resp.Header.Get("Cache-Control"), body)
	}
	for _, leak := range []string{"postgres", "10.0.0.7", "signer"} {
		if strings.Contains(string(body), leak) {
			t.Fatalf("the error leaks %q: %s", leak, body)
		}
	}
	down.Store(false)
	if set, _ := fetchSet(t, hc, setURL); len(set.Keys) != 1 {
		t.Fatalf("after recovery: %v", kids(set))
	}
}
