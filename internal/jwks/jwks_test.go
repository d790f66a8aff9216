package jwks_test

import (
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/jwks"
)

// max-age = (prePublish − cacheTTL) / 2, capped at an hour; under a second
// it is no-cache. The property that matters: a verifier that caches the
// set for twice max-age, after it took up to cacheTTL to show a new key,
// still holds that key when the pre-publication window ends.
func TestMaxAgeKeepsNewKeysAheadOfCaches(t *testing.T) {
	for _, tc := range []struct {
		prePublish, cacheTTL, want time.Duration
		header                     string
	}{
		{5 * time.Minute, 2 * time.Second, 148 * time.Second, "public, max-age=148"},
		{10 * time.Minute, time.Second, 299 * time.Second, "public, max-age=299"},
		{5 * time.Second, 2 * time.Second, 0, "no-cache"}, // 0.5 s: under a second
		{48 * time.Hour, 2 * time.Second, time.Hour, "public, max-age=3600"},
		{2 * time.Second, 2 * time.Second, 0, "no-cache"},
		{time.Second, 2 * time.Second, 0, "no-cache"},
		{0, 0, 0, "no-cache"},
	} {
		got := jwks.MaxAge(tc.prePublish, tc.cacheTTL)
		if got != tc.want || jwks.CacheControl(got) != tc.header {
			t.Errorf("MaxAge(%v, %v) = %v %q, want %v %q", tc.prePublish, tc.cacheTTL, got, jwks.CacheControl(got), tc.want, tc.header)
		}
		// Two cache layers in the signer (keyring, rendered set), then up
		// to two max-ages in front of the verifier.
		if 2*tc.cacheTTL+2*got > tc.prePublish && got > 0 {
			t.Errorf("MaxAge(%v, %v) = %v lets a cache miss a new key", tc.prePublish, tc.cacheTTL, got)
		}
	}
}
