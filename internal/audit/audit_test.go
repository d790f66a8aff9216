package audit_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/audit"
)

// memLog is an Appender in memory whose commits can be held and failed.
type memLog struct {
	mu      sync.Mutex
	entries []audit.Entry
	batches []int
	hold    chan struct{} // if set, the first commit closes started and waits for it
	started chan struct{}
	fail    func(batch []audit.Entry) error
}

func held() *memLog { return &memLog{hold: make(chan struct{}), started: make(chan struct{})} }

func (m *memLog) AppendAudit(_ context.Context, batch []audit.Entry) error {
	if m.hold != nil {
		close(m.started)
		<-m.hold
		m.hold = nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		if err := m.fail(batch); err != nil {
			return err
		}
	}
	var seq uint64
	var hash string
	if n := len(m.entries); n > 0 {
		seq, hash = m.entries[n-1].Seq, m.entries[n-1].Hash
	}
	audit.Chain(batch, seq, hash)
	m.entries = append(m.entries, batch...)
	m.batches = append(m.batches, len(batch))
	return nil
}

func entry(i int) audit.Entry {
	return audit.Entry{ID: fmt.Sprint("e", i), Subject: audit.SubjectSigner, Relation: "sign", Object: audit.Object("s", "k"),
		Reason: audit.ReasonGranted, CaveatContext: []string{}, Timestamp: time.Unix(int64(i), 0).UTC()}
}

// Entries queued while a commit runs share the next commit.
func TestWriterGroupsConcurrentEntries(t *testing.T) {
	log := held()
	w := audit.NewWriter(log, audit.WriterOptions{})
	defer w.Close()
	ctx := context.Background()
	first := w.Submit(ctx, entry(0))
	<-log.started
	// The first commit is held; 99 more entries queue behind it.
	var pend []*audit.Pending
	for i := 1; i < 100; i++ {
		pend = append(pend, w.Submit(ctx, entry(i)))
	}
	close(log.hold)
	if err := first.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range pend {
		if err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(log.batches) != 2 || log.batches[0] != 1 || log.batches[1] != 99 {
		t.Fatalf("batches = %v, want [1 99]", log.batches)
	}
	if got := pend[98].Committed()[0]; got.Seq != 100 || got.Hash == "" {
		t.Fatalf("committed entry = %+v", got)
	}
}

// A failed commit fails exactly the entries in it.
func TestWriterFailsOnlyTheFailedBatch(t *testing.T) {
	log := held()
	log.fail = func(b []audit.Entry) error {
		if len(b) > 1 {
			return errors.New("disk full")
		}
		return nil
	}
	w := audit.NewWriter(log, audit.WriterOptions{})
	defer w.Close()
	ctx := context.Background()
	first := w.Submit(ctx, entry(0))
	<-log.started
	a, b := w.Submit(ctx, entry(1)), w.Submit(ctx, entry(2))
	close(log.hold)
	if err := first.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*audit.Pending{a, b} {
		if err := p.Wait(ctx); !errors.Is(err, audit.ErrUnavailable) {
			t.Fatalf("entry in the failed batch: %v", err)
		}
	}
	if err := w.Write(ctx, entry(3)); err != nil {
		t.Fatalf("after the failure: %v", err)
	}
	if len(log.entries) != 2 {
		t.Fatalf("%d entries stored, want 2", len(log.entries))
	}
}

// Entries submitted together share a commit and stay in order.
func TestWriterKeepsGroupsTogether(t *testing.T) {
	log := &memLog{}
	w := audit.NewWriter(log, audit.WriterOptions{MaxBatch: 3})
	ctx := context.Background()
	var pend []*audit.Pending
	for i := range 10 {
		pend = append(pend, w.Submit(ctx, entry(2*i), entry(2*i+1)))
	}
	w.Close()
	for i, p := range pend {
		if err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		c := p.Committed()
		if len(c) != 2 || c[0].ID != fmt.Sprint("e", 2*i) || c[1].Seq != c[0].Seq+1 {
			t.Fatalf("group %d committed as %+v", i, c)
		}
	}
	for _, n := range log.batches {
		if n%2 != 0 {
			t.Fatalf("a group was split across commits: batches %v", log.batches)
		}
	}
}

func TestWriterCloseDrains(t *testing.T) {
	log := &memLog{}
	w := audit.NewWriter(log, audit.WriterOptions{MaxBatch: 3})
	ctx := context.Background()
	var pend []*audit.Pending
	for i := range 10 {
		pend = append(pend, w.Submit(ctx, entry(i)))
	}
	w.Close()
	for _, p := range pend {
		if err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(log.entries) != 10 {
		t.Fatalf("%d entries after Close, want 10", len(log.entries))
	}
	for _, n := range log.batches {
		if n > 3 {
			t.Fatalf("batch of %d over MaxBatch 3", n)
		}
	}
	if err := w.Write(ctx, entry(11)); !errors.Is(err, audit.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
}

func chain(n int) []audit.Entry {
	es := make([]audit.Entry, n)
	for i := range es {
		es[i] = entry(i)
	}
	audit.Chain(es, 0, "")
	return es
}

func verify(es []audit.Entry) error {
	var v audit.Verifier
	for _, e := range es {
		if err := v.Add(e); err != nil {
			return err
		}
	}
	return nil
}

func TestChainDetectsTampering(t *testing.T) {
	if err := verify(chain(5)); err != nil {
		t.Fatalf("untouched chain: %v", err)
	}
	for name, tamper := range map[string]func([]audit.Entry) []audit.Entry{
		"edited reason": func(es []audit.Entry) []audit.Entry { es[2].Reason = audit.ReasonCaveatViolation; return es },
		"edited caveat": func(es []audit.Entry) []audit.Entry { es[2].CaveatContext = []string{"x"}; return es },
		"edited time":   func(es []audit.Entry) []audit.Entry { es[1].Timestamp = es[1].Timestamp.Add(time.Second); return es },
		"deleted":       func(es []audit.Entry) []audit.Entry { return append(es[:2], es[3:]...) },
		"swapped":       func(es []audit.Entry) []audit.Entry { es[1], es[2] = es[2], es[1]; return es },
		"swapped, seqs renumbered": func(es []audit.Entry) []audit.Entry {
			es[1], es[2] = es[2], es[1]
			es[1].Seq, es[2].Seq = 2, 3
			return es
		},
		"rehashed edit": func(es []audit.Entry) []audit.Entry {
			es[2].Object = "signing-key:s:other"
			es[2].Hash = es[2].ComputeHash() // a forger recomputes this entry; the next one breaks
			return es
		},
	} {
		if err := verify(tamper(chain(5))); !errors.Is(err, audit.ErrChainBroken) {
			t.Errorf("%s: %v, want ErrChainBroken", name, err)
		}
	}
}
