package lograte

import (
	"testing"
	"time"
)

func TestOncePerIntervalPerKey(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(10 * time.Second)
	l.now = func() time.Time { return now }
	if ok, n := l.Allow("a"); !ok || n != 0 {
		t.Fatalf("first a: %v %d", ok, n)
	}
	if ok, _ := l.Allow("b"); !ok {
		t.Fatal("a held back b")
	}
	for range 3 {
		if ok, _ := l.Allow("a"); ok {
			t.Fatal("a repeated within the interval")
		}
	}
	now = now.Add(10 * time.Second)
	if ok, n := l.Allow("a"); !ok || n != 3 {
		t.Fatalf("a after the interval: %v, suppressed %d, want 3", ok, n)
	}
}
