package sidecar_test

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/plexsphere/signer/internal/testing/signertest"
	"github.com/plexsphere/signer/sidecar"
)

// flakyListener is a replica's listener that can play dead: while down it
// closes every connection as soon as it is accepted (each one a
// reconnection attempt of the sidecar, timed) and has closed the open ones.
type flakyListener struct {
	net.Listener
	mu       sync.Mutex
	down     bool
	open     []net.Conn
	attempts []time.Time
	refused  chan struct{}
}

func newFlakyListener(t *testing.T) *flakyListener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return &flakyListener{Listener: l, refused: make(chan struct{}, 1024)}
}

func (l *flakyListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		if l.down {
			l.attempts = append(l.attempts, time.Now())
			l.mu.Unlock()
			c.Close()
			select {
			case l.refused <- struct{}{}:
			default:
			}
			continue
		}
		l.open = append(l.open, c)
		l.mu.Unlock()
		return c, nil
	}
}

func (l *flakyListener) setDown(down bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.down = down
	if down {
		for _, c := range l.open {
			c.Close()
		}
		l.open = nil
	}
}

// Failover over two replicas: while A is down the sidecar retries it at
// least once every ReconnectMaxDelay (+ jitter), not on gRPC's default
// backoff that grows to 120 s; once A is back it is used within seconds;
// then B goes away and every call still succeeds on A.
func TestFailoverUsesReturningReplica(t *testing.T) {
	ca := signertest.NewCA(t)
	lisA := newFlakyListener(t)
	a := signertest.Start(t, signertest.WithCA(ca), signertest.WithListener(lisA))
	b := signertest.Start(t, signertest.WithCA(ca))
	sc := signertest.StartSidecar(t, a.Addr+","+b.Addr, a.Source(a.Issue(t, signertest.CoreID)))
	c := dialClient(t, sc.Socket)
	sign := func() (string, error) {
		sig, err := c.Sign(ctx10s(t), scope, []byte("m"))
		return sig.KeyID, err
	}
	keys := map[string]bool{}
	for range 10 {
		k, err := sign()
		if err != nil {
			t.Fatal(err)
		}
		keys[k] = true
	}
	if len(keys) != 2 {
		t.Fatalf("signatures from %d replicas, want 2", len(keys))
	}

	lisA.setDown(true)
	// Eight refused attempts, each within the limit of the one before: on
	// gRPC's default backoff the eight alone would take about 40 s.
	limit := sidecar.ReconnectMaxDelay*12/10 + 300*time.Millisecond // jitter, and slack for a loaded machine
	for i := range 8 {
		select {
		case <-lisA.refused:
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d reconnection attempts to the down replica in 30s", i)
		}
		lisA.mu.Lock()
		at := append([]time.Time(nil), lisA.attempts...)
		lisA.mu.Unlock()
		if n := len(at); n > 1 && at[n-1].Sub(at[n-2]) > limit {
			t.Fatalf("attempt %d came %v after the previous one (limit %v)", n, at[n-1].Sub(at[n-2]), limit)
		}
	}
	// Only B signs now.
	keyB, err := sign()
	if err != nil {
		t.Fatalf("Sign with A down: %v", err)
	}
	keyA := ""
	for k := range keys {
		if k != keyB {
			keyA = k
		}
	}

	lisA.setDown(false)
	back := time.Now()
	for {
		k, err := sign()
		if err != nil {
			t.Fatalf("Sign while B is up: %v", err)
		}
		if k == keyA {
			break
		}
		if time.Since(back) > 3*time.Second {
			t.Fatal("the returning replica was not used within 3s")
		}
	}
	t.Logf("replica A used again %v after it came back", time.Since(back).Round(time.Millisecond))

	b.Stop()
	for i := range 50 {
		k, err := sign()
		if err != nil {
			t.Fatalf("call %d after B stopped, with A up: %v", i, err)
		}
		if k != keyA {
			t.Fatalf("call %d signed by %s, want A's key %s", i, k, keyA)
		}
	}
}
