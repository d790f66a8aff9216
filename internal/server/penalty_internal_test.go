package server

import (
	"net/netip"
	"testing"
	"time"
)

// The strike table on its own, on a clock the test moves.
func TestPenaltiesBudget(t *testing.T) {
	now := time.Unix(0, 0)
	p := newPenalties(1, 3, 2, func() time.Time { return now })
	a, b, c := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")
	if p.spent(a) || p.charge(a) {
		t.Fatal("a source never struck is spent or charged")
	}
	for range 3 {
		p.take(a)
	}
	if !p.spent(a) {
		t.Fatal("three strikes of a burst of 3 left the source a strike")
	}
	// Strikes of connections under way go below zero, down to -burst.
	for range 10 {
		p.take(a)
	}
	now = now.Add(3 * time.Second) // -3 + 3
	if !p.spent(a) {
		t.Fatal("the debt of connections under way was forgotten")
	}
	now = now.Add(time.Second)
	if p.spent(a) {
		t.Fatal("a strike refilled, the source is still spent")
	}
	// A charge up front, given back: the same as before.
	if !p.charge(a) || !p.spent(a) {
		t.Fatal("a charge did not spend the source's one strike")
	}
	p.refund(a)
	if p.spent(a) {
		t.Fatal("a refund did not give the strike back")
	}
	// Full table: a refilled source makes room, a spending one does not,
	// and an untracked source is never refused.
	p.take(b)
	p.take(c)
	if p.spent(c) || len(p.m) != 2 {
		t.Fatalf("a third source was tracked in a table of 2 (or refused): %d tracked", len(p.m))
	}
	now = now.Add(10 * time.Second) // a and b full again
	p.take(c)
	if _, ok := p.m[c]; !ok {
		t.Fatal("refilled sources did not make room")
	}
}
