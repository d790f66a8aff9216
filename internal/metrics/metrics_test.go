package metrics

import (
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// TestSidecarCallSeries checks the cached series count what the vectors
// would: per method (unknown ones as "other") and code, from racing first
// uses too, and a code beyond the known ones.
func TestSidecarCallSeries(t *testing.T) {
	const sign = "/plexsphere.signer.v1.SignerService/Sign"
	s := NewSidecar([]string{sign}, func() bool { return true }, nil)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 500 {
				s.ObserveCall(sign, codes.OK, time.Millisecond)
			}
		}()
	}
	wg.Wait()
	s.ObserveCall(sign, codes.Unavailable, time.Millisecond)
	s.ObserveCall("/x.Y/Z", codes.Unimplemented, time.Millisecond)
	s.ObserveCall("/x.Y/W", codes.Unimplemented, time.Millisecond)
	s.ObserveCall(sign, codes.Code(99), time.Millisecond)

	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`plexsphere_sidecar_calls_total{code="OK",method="` + sign + `"} 4000`,
		`plexsphere_sidecar_calls_total{code="Unavailable",method="` + sign + `"} 1`,
		`plexsphere_sidecar_calls_total{code="Unimplemented",method="other"} 2`,
		`plexsphere_sidecar_calls_total{code="Code(99)",method="` + sign + `"} 1`,
		`plexsphere_sidecar_call_duration_seconds_count{method="` + sign + `"} 4002`,
		`plexsphere_sidecar_call_duration_seconds_count{method="other"} 2`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(body, `code="NotFound"`) {
		t.Errorf("/metrics shows a series for a code never seen")
	}
}
