package sidecar

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// errUIDRefused is what a caller whose uid is not on the allow-list gets for
// every call it tries, health included.
var errUIDRefused = status.Error(codes.PermissionDenied, "sidecar: caller uid is not on the socket allow-list")

// maxRefused bounds the refused connections held open at once (to tell their
// callers why); beyond it they are closed at once.
const maxRefused = 16

// localConn is an accepted connection with the kernel's word on its caller
// and its slot in a connection cap, given back on Close.
type localConn struct {
	net.Conn
	uid, pid int
	hasCred  bool
	release  func()
	once     sync.Once
}

// SyscallConn reaches the socket under c (for non-blocking writes).
func (c *localConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.ErrUnsupported
	}
	return sc.SyscallConn()
}

func (c *localConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// guard admits connections. The uid allow-list is applied once per
// connection, when it is accepted, before gRPC sees a byte of it: a refused
// caller never reaches the proxy's server, so it can open no stream there
// (health Watch included), whatever it sends. Its connection goes to the
// refuser, which answers every call on it PermissionDenied before any
// stream exists and closes it within about two seconds. Admitted connections
// are capped at MaxConnections; one over the cap is closed.
type guard struct {
	net.Listener
	p *Proxy
}

func (g guard) Accept() (net.Conn, error) {
	for {
		c, err := g.Listener.Accept()
		if err != nil {
			return nil, err
		}
		lc := &localConn{Conn: c, release: func() {}}
		if uc, ok := c.(*net.UnixConn); ok {
			cred, err := peerCred(uc)
			if err != nil {
				g.p.cfg.Refused("no_peer_cred")
				g.p.warn("caller refused: no peer credentials", "err", err)
				c.Close()
				continue
			}
			lc.uid, lc.pid, lc.hasCred = int(cred.Uid), int(cred.Pid), true
		}
		if len(g.p.allowUID) > 0 && (!lc.hasCred || !g.p.allowUID[lc.uid]) {
			g.p.cfg.Refused("uid")
			g.p.warn("caller refused: uid not on the socket allow-list", "uid", lc.uid, "pid", lc.pid)
			g.p.refuse(lc)
			continue
		}
		select {
		case g.p.conns <- struct{}{}:
			lc.release = func() { <-g.p.conns }
			return lc, nil
		default:
			g.p.cfg.Refused("max_connections")
			g.p.warn("caller refused: connection limit reached", "limit", cap(g.p.conns), "uid", lc.uid, "pid", lc.pid)
			c.Close()
		}
	}
}

// refuse hands lc to the refuser, or closes it when maxRefused are open.
func (p *Proxy) refuse(lc *localConn) {
	select {
	case p.refusedSlots <- struct{}{}:
		lc.release = func() { <-p.refusedSlots }
		p.refused.ch <- lc // never blocks: the queue holds maxRefused
	default:
		lc.Close()
	}
}

// newRefuser is the server for refused connections: every stream is aborted
// in the transport (InTapHandle) before it exists, and the connection is
// closed after a second.
func newRefuser() *grpc.Server {
	return grpc.NewServer(
		grpc.Creds(localCreds{}),
		grpc.InTapHandle(func(ctx context.Context, _ *tap.Info) (context.Context, error) { return ctx, errUIDRefused }),
		grpc.MaxConcurrentStreams(1),
		grpc.ConnectionTimeout(time.Second),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: time.Second, MaxConnectionAgeGrace: time.Second}),
	)
}

// queueListener is a net.Listener fed by the guard.
type queueListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
	addr   net.Addr
}

func newQueueListener(n int) *queueListener {
	return &queueListener{ch: make(chan net.Conn, n), done: make(chan struct{}), addr: &net.UnixAddr{Name: "refused", Net: "unix"}}
}

func (q *queueListener) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *queueListener) Close() error {
	q.closed.Do(func() {
		close(q.done)
		for {
			select {
			case c := <-q.ch:
				c.Close()
			default:
				return
			}
		}
	})
	return nil
}

func (q *queueListener) Addr() net.Addr { return q.addr }

// warn logs at most once a second: a refused caller must not be able to
// flood the sidecar's log.
func (p *Proxy) warn(msg string, args ...any) {
	now := time.Now().UnixNano()
	next := p.nextWarn.Load()
	if now < next || !p.nextWarn.CompareAndSwap(next, now+int64(time.Second)) {
		p.suppressed.Add(1)
		return
	}
	if n := p.suppressed.Swap(0); n > 0 {
		args = append(args, "suppressed_since_last", n)
	}
	p.cfg.Log.Warn(msg, args...)
}
