package sidecar

import (
	"net"
	"testing"
)

// A relay whose upstream dial finishes after the drain gave up waiting must
// not start: nothing would ever close it, and the drain would wait for the
// core to hang up.
func TestRelayStartingAfterTheDrainIsRefused(t *testing.T) {
	var r relayConns
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if !r.add(a) {
		t.Fatal("a relay before the drain was refused")
	}
	r.closeAll()
	if _, err := a.Write([]byte{0}); err == nil {
		t.Fatal("closeAll left an open relay's connection open")
	}
	if r.add(b) {
		t.Fatal("a relay registered after closeAll: the drain would wait for it")
	}
}
