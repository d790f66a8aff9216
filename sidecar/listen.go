package sidecar

import (
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/plexsphere/signer/internal/localaddr"
)

// ErrNotLocal is returned for a listen address that is neither a Unix socket
// nor a loopback address.
var ErrNotLocal = localaddr.ErrNotLocal

// Addr is a checked listen address: a Unix socket or a loopback TCP
// address. Only ParseListen makes one; the zero Addr is refused.
type Addr = localaddr.Addr

// ParseListen accepts "unix:///abs/path" (or "unix:/abs/path"),
// "localhost:port" (taken as 127.0.0.1, never looked up) and a loopback IP
// with a port ("127.0.0.1:port", "[::1]:port"). Other hostnames, wildcard
// and non-loopback addresses are refused: the core's traffic must not leave
// the pod's loopback, and nothing off-pod may reach the sidecar.
func ParseListen(s string) (Addr, error) { return localaddr.Parse(s) }

// listen opens a; a stale socket file from a previous run is replaced.
func listen(a Addr, mode os.FileMode) (net.Listener, error) {
	if !a.IsUnix() {
		return net.Listen("tcp", a.Address())
	}
	path := a.Address()
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("sidecar: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	// Created owner-only, then opened up to mode: no window in which
	// another uid could connect before the mode is set (the umask is the
	// process's; nothing else creates files while the sidecar starts).
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
