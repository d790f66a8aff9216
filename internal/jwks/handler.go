package jwks

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/plexsphere/signer/internal/names"
	"github.com/plexsphere/signer/internal/ops"
	"github.com/plexsphere/signer/internal/store"
)

// The endpoint's paths. The scope is a path segment, so that with an issuer
// configured each scope is an OIDC issuer of its own
// (<issuer-url>/scopes/<scope>) whose discovery document sits where OIDC
// Discovery looks for it: <issuer>/.well-known/openid-configuration.
const (
	PathPrefix    = "/scopes/"
	JWKSSuffix    = "/.well-known/jwks.json"
	OIDCSuffix    = "/.well-known/openid-configuration"
	ContentType   = "application/jwk-set+json"
	maxCacheAge   = time.Hour
	maxCached     = 4096
	maxSources    = 10000
	errNotFound   = "not_found"
	errRateLimit  = "rate_limited"
	errUnavail    = "temporarily_unavailable"
	errBadMethod  = "method_not_allowed"
	descNoScope   = "no such scope or resource"
	descRate      = "too many requests from this address; retry after the Retry-After seconds"
	descUnavail   = "the key store cannot be read; retry later"
	descBadMethod = "only GET and HEAD"
)

// MaxAge is the Cache-Control max-age of a key set, chosen so that no
// verifier's cache can miss a new key when it starts signing.
//
// A key opened at time T is published at once in the store, and in this
// endpoint's answers by T + 2 × cacheTTL: the signer's keyring keeps a
// scope's published keys for the key-cache TTL, and each replica keeps the
// rendered set for the same TTL on top. Commit refuses to make the key
// ACTIVE before T + prePublish. A verifier that fetched the set just before
// the key appeared keeps its copy for max-age; if a shared cache (a CDN, a
// gateway) sits in between and the verifier's library ignores the Age
// header, as many do, that copy can be up to 2 × max-age old. So every
// verifier holds the new key by T + 2 × cacheTTL + 2 × max-age, which must
// not pass T + prePublish:
//
//	max-age = (prePublish − 2 × cacheTTL) / 2, at most one hour, whole seconds.
//
// The hour bounds how long a verifier keeps trusting a key after it was
// retired. A result under one second means "no-cache" (revalidate every
// time; the ETag keeps that cheap).
func MaxAge(prePublish, cacheTTL time.Duration) time.Duration {
	age := (prePublish - 2*cacheTTL) / 2
	if age > maxCacheAge {
		age = maxCacheAge
	}
	if age < time.Second {
		return 0
	}
	return age.Truncate(time.Second)
}

// CacheControl is the Cache-Control header value for a max-age.
func CacheControl(maxAge time.Duration) string {
	if maxAge <= 0 {
		return "no-cache"
	}
	return "public, max-age=" + strconv.Itoa(int(maxAge/time.Second))
}

// Config configures Handler.
type Config struct {
	// Keys lists a scope's keys in every state (store.Store.Keys).
	Keys func(ctx context.Context, scope string) ([]store.Key, error)
	// CacheTTL is how long a rendered set is reused (the key-cache TTL).
	CacheTTL time.Duration
	// MaxAge is the answers' Cache-Control max-age (see MaxAge).
	MaxAge time.Duration
	// Issuer, if set, is the https base URL the endpoint is reached at;
	// each scope then serves an OIDC discovery document with the issuer
	// <Issuer>/scopes/<scope>.
	Issuer string
	// Rate is the requests per second one source address may make
	// (bursts of twice that); more are answered 429.
	Rate float64
	// Clock is the time source (time.Now if nil).
	Clock func() time.Time
	// Log receives store errors (never a caller's input).
	Log *slog.Logger
	// Observe, if set, is told each answer's status code (for metrics).
	Observe func(code int)
}

type handler struct {
	cfg     Config
	control string

	mu    sync.Mutex
	cache map[string]rendered // scope → its rendered set

	sources *ops.Budgets // per source address (an IPv6 /64), bounded
}

type rendered struct {
	body, oidc []byte // nil oidc without an issuer
	etag       string // of body
	oidcTag    string
	found      bool // the scope has at least one published key
	at         time.Time
}

// Handler serves, for each scope, GET/HEAD <PathPrefix><scope><JWKSSuffix>
// and, with an issuer, <PathPrefix><scope><OIDCSuffix>. Answers carry a
// strong ETag (If-None-Match → 304) and Cache-Control from cfg.MaxAge. An
// unknown or malformed scope and any other path are 404 with a JSON error
// that never repeats the request. The endpoint serves public data only:
// it authenticates nobody and is not audited (docs/operations.md).
func Handler(cfg Config) http.Handler {
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	cfg.Issuer = strings.TrimRight(cfg.Issuer, "/")
	return &handler{cfg: cfg, control: CacheControl(cfg.MaxAge), cache: map[string]rendered{},
		sources: ops.NewBudgets(cfg.Rate, int(math.Max(1, 2*cfg.Rate)), maxSources)}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &recorder{ResponseWriter: w, code: http.StatusOK}
	h.serve(rec, r)
	if h.cfg.Observe != nil {
		h.cfg.Observe(rec.code)
	}
}

func (h *handler) serve(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("X-Content-Type-Options", "nosniff")
	// Public keys: any origin may read them (browser-side verifiers).
	hdr.Set("Access-Control-Allow-Origin", "*")
	if wait := h.limit(r.RemoteAddr); wait > 0 {
		hdr.Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		writeError(w, http.StatusTooManyRequests, errRateLimit, descRate)
		return
	}
	scope, doc, ok := route(r.URL.Path)
	if !ok || (doc == OIDCSuffix && h.cfg.Issuer == "") || names.CheckScope(scope) != nil {
		writeError(w, http.StatusNotFound, errNotFound, descNoScope)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, errBadMethod, descBadMethod)
		return
	}
	set, err := h.rendered(r.Context(), scope)
	if err != nil {
		h.cfg.Log.Warn("jwks: the key store cannot be read", "err", err)
		hdr.Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, errUnavail, descUnavail)
		return
	}
	if !set.found {
		writeError(w, http.StatusNotFound, errNotFound, descNoScope)
		return
	}
	body, etag, ctype := set.body, set.etag, ContentType
	if doc == OIDCSuffix {
		body, etag, ctype = set.oidc, set.oidcTag, "application/json"
	}
	hdr.Set("Cache-Control", h.control)
	hdr.Set("ETag", etag)
	if noneMatch(r.Header.Get("If-None-Match"), etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	hdr.Set("Content-Type", ctype)
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

// route splits /scopes/<scope>/.well-known/<doc>.
func route(path string) (scope, doc string, ok bool) {
	rest, ok := strings.CutPrefix(path, PathPrefix)
	if !ok {
		return "", "", false
	}
	for _, suffix := range []string{JWKSSuffix, OIDCSuffix} {
		if s, ok := strings.CutSuffix(rest, suffix); ok && !strings.Contains(s, "/") {
			return s, suffix, true
		}
	}
	return "", "", false
}

// rendered returns the scope's set, rendered at most CacheTTL ago.
func (h *handler) rendered(ctx context.Context, scope string) (rendered, error) {
	now := h.cfg.Clock()
	h.mu.Lock()
	c, ok := h.cache[scope]
	h.mu.Unlock()
	if ok && now.Sub(c.at) < h.cfg.CacheTTL {
		return c, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	keys, err := h.cfg.Keys(ctx, scope)
	if err != nil {
		return rendered{}, err
	}
	set := FromKeys(keys)
	// Like the PublicKey RPC and signerctl jwks: a scope with nothing to
	// publish (no key, or only RETIRED ones) is not found.
	c = rendered{found: len(set.Keys) > 0, at: now}
	if c.body, err = json.Marshal(set); err != nil {
		return rendered{}, err
	}
	c.etag = etagOf(c.body)
	if h.cfg.Issuer != "" {
		issuer := h.cfg.Issuer + PathPrefix + scope
		c.oidc, err = json.Marshal(discovery{Issuer: issuer, JWKSURI: issuer + JWKSSuffix,
			ResponseTypes: []string{"id_token"}, SubjectTypes: []string{"public"}, SigningAlgs: []string{"EdDSA"}})
		if err != nil {
			return rendered{}, err
		}
		c.oidcTag = etagOf(c.oidc)
	}
	h.mu.Lock()
	if len(h.cache) >= maxCached {
		// Unknown scopes fill the cache too; start over rather than track
		// an order (the rate limit bounds the store reads this costs).
		h.cache = map[string]rendered{}
	}
	h.cache[scope] = c
	h.mu.Unlock()
	return c, nil
}

// discovery is the OIDC Discovery 1.0 metadata a verifier needs: the
// required fields, nothing the signer does not do.
type discovery struct {
	Issuer        string   `json:"issuer"`
	JWKSURI       string   `json:"jwks_uri"`
	ResponseTypes []string `json:"response_types_supported"`
	SubjectTypes  []string `json:"subject_types_supported"`
	SigningAlgs   []string `json:"id_token_signing_alg_values_supported"`
}

// etagOf is a strong validator: the body's SHA-256, so equal sets on every
// replica carry the same tag.
func etagOf(body []byte) string {
	sum := sha256.Sum256(body)
	return `"` + base64.RawURLEncoding.EncodeToString(sum[:]) + `"`
}

// noneMatch reports whether an If-None-Match header matches etag (RFC 9110
// 13.1.2: "*" or any listed tag, compared weakly).
func noneMatch(header, etag string) bool {
	if header == "" {
		return false
	}
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(t)
		if t == "*" || strings.TrimPrefix(t, "W/") == etag {
			return true
		}
	}
	return false
}

// limit takes a token from the source's budget; it returns how long to
// wait when there is none. Sources are IPv4 addresses and IPv6 /64s
// (ops.Budgets; behind a proxy or a load balancer that does not keep the
// client's address, all its clients share one budget).
func (h *handler) limit(remote string) time.Duration {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return 0
	}
	return h.sources.Take(addr)
}

type apiError struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
}

func writeError(w http.ResponseWriter, code int, name, desc string) {
	body, _ := json.Marshal(apiError{Error: name, Description: desc})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write(body)
}

type recorder struct {
	http.ResponseWriter
	code int
}

func (r *recorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}
