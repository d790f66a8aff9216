package ops

import (
	"net/netip"
	"testing"
)

// One budget per IPv4 address and per IPv6 /64: addresses an attacker can
// pick from one /64 share a budget; other /64s and IPv4 sources do not.
func TestBudgetsPerSource(t *testing.T) {
	b := NewBudgets(0.001, 1, 100)
	if b.Take(netip.MustParseAddr("2001:db8::1")) != 0 {
		t.Fatal("first request refused")
	}
	if b.Take(netip.MustParseAddr("2001:db8::ffff:1234")) == 0 {
		t.Fatal("another address of the same /64 got a fresh budget")
	}
	if b.Take(netip.MustParseAddr("2001:db8:0:1::1")) != 0 {
		t.Fatal("another /64 shares the budget")
	}
	if b.Take(netip.MustParseAddr("192.0.2.1")) != 0 || b.Take(netip.MustParseAddr("::ffff:192.0.2.1")) == 0 {
		t.Fatal("an IPv4 source and its IPv4-mapped form are not one budget")
	}
}

// The table never grows past its bound: with every tracked source still
// spending, a new source is refused; sources whose budget refilled are
// forgotten to make room.
func TestBudgetsBounded(t *testing.T) {
	b := NewBudgets(0.001, 1, 3)
	for _, a := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3"} {
		if b.Take(netip.MustParseAddr(a)) != 0 {
			t.Fatalf("%s refused", a)
		}
	}
	if b.Take(netip.MustParseAddr("192.0.2.4")) == 0 || b.Len() != 3 {
		t.Fatalf("a fourth source was admitted with every tracked one active (tracked %d)", b.Len())
	}
	idle := NewBudgets(1e9, 1, 2) // refills at once: every source is idle again
	for _, a := range []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"} {
		if idle.Take(netip.MustParseAddr(a)) != 0 {
			t.Fatalf("%s refused although the tracked sources were idle", a)
		}
	}
	if idle.Len() > 2 {
		t.Fatalf("tracked %d sources, bound 2", idle.Len())
	}
}
