package sidecar

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrNotLocal is returned for a listen address that is neither a Unix socket
// nor a loopback address.
var ErrNotLocal = errors.New("sidecar: listen address must be unix:///path or a loopback IP:port")

// Addr is a parsed listen address.
type Addr struct {
	Unix string // socket path, or ""
	TCP  string // loopback host:port, or ""
}

func (a Addr) String() string {
	if a.Unix != "" {
		return "unix://" + a.Unix
	}
	return a.TCP
}

// ParseListen accepts "unix:///abs/path" (or "unix:/abs/path") and
// "127.0.0.1:port" / "[::1]:port". Hostnames, wildcard and non-loopback
// addresses are refused: the core's traffic must not leave the pod's
// loopback, and nothing off-pod may reach the sidecar.
func ParseListen(s string) (Addr, error) {
	if rest, ok := strings.CutPrefix(s, "unix:"); ok {
		path := strings.TrimPrefix(rest, "//")
		if !filepath.IsAbs(path) {
			return Addr{}, fmt.Errorf("%w: %q needs an absolute socket path", ErrNotLocal, s)
		}
		return Addr{Unix: filepath.Clean(path)}, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Addr{}, fmt.Errorf("%w: %q: %v", ErrNotLocal, s, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return Addr{}, fmt.Errorf("%w: %q is not a loopback IP (use 127.0.0.1 or ::1)", ErrNotLocal, s)
	}
	// An empty port would mean "any" to net.Listen (found by FuzzSidecarListen).
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return Addr{}, fmt.Errorf("%w: %q has no valid port", ErrNotLocal, s)
	}
	return Addr{TCP: net.JoinHostPort(ip.String(), port)}, nil
}

// listen opens a; a stale socket file from a previous run is replaced.
func listen(a Addr, mode os.FileMode) (net.Listener, error) {
	if a.TCP != "" {
		return net.Listen("tcp", a.TCP)
	}
	if fi, err := os.Lstat(a.Unix); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("sidecar: %s exists and is not a socket", a.Unix)
		}
		if err := os.Remove(a.Unix); err != nil {
			return nil, err
		}
	}
	l, err := net.Listen("unix", a.Unix)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(a.Unix, mode); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
