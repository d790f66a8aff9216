package bbolt_test

import (
	"context"
	"testing"
	"time"

	"github.com/plexsphere/signer/client/auditlog"
	"github.com/plexsphere/signer/internal/audit"
)

// BenchmarkAppendAudit prices one group commit of 64 Sign calls (128
// entries) with fsync: the writer's batch at 64 in flight.
func BenchmarkAppendAudit(b *testing.B) {
	s, _ := openStore(b)
	w := audit.NewWriter(s, audit.WriterOptions{})
	defer w.Close()
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var pend []*audit.Pending
		for range 64 {
			req := auditlog.NewRequestID()
			adm := auditlog.New(req, auditlog.SubjectPeer("spiffe://example.org/ns/plexsphere/sa/plexsphere-core"), auditlog.RelationConnect, "/plexsphere.signer.v1.SignerService/Sign", time.Now())
			mw := auditlog.New(req, auditlog.SubjectSigner, auditlog.RelationSign, "/plexsphere.signer.v1.SignerService/Sign", time.Now())
			mw.Object, mw.Reason, mw.Code = auditlog.Object("payments", "abcdefghijklmnopqrstuvwx"), auditlog.ReasonGranted, "OK"
			mw.PayloadSHA256, mw.SignatureSHA256 = make([]byte, 32), make([]byte, 32)
			pend = append(pend, w.Submit(ctx, audit.LaneAdmitted, adm, mw))
		}
		for _, p := range pend {
			if err := p.Wait(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	size, _ := s.AuditSize(ctx)
	b.ReportMetric(float64(b.N*64)/b.Elapsed().Seconds(), "signs/s")
	_ = size
}
