// Package localaddr parses the addresses a pod-local listener may use: a
// Unix socket or a loopback TCP address, nothing that can be reached from
// outside the pod. An Addr can only be made by Parse, so a holder of one
// knows it was checked; callers parse once, when their settings are read.
//
// It is a leaf (standard library only), so configuration and the sidecar
// share one definition of "local" without importing each other.
package localaddr

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrNotLocal is returned for an address that is neither a Unix socket nor
// a loopback address.
var ErrNotLocal = errors.New("listen address must be unix:///path, localhost:port or a loopback IP:port")

// ErrUIDsNeedUnix is returned for a uid allow-list next to a TCP address:
// a loopback TCP caller has no uid the kernel can vouch for, so the list
// could not be enforced on it.
var ErrUIDsNeedUnix = errors.New("a uid allow-list needs Unix-socket-only listening (a loopback TCP caller has no uid to check)")

// Addr is a checked local listen address. The zero Addr is invalid.
type Addr struct {
	unix string // socket path, or ""
	tcp  string // loopback ip:port, or ""
}

// Parse accepts "unix:///abs/path" (or "unix:/abs/path"), "localhost:port"
// (taken as 127.0.0.1, never looked up: /etc/hosts or DNS could point it
// elsewhere) and a loopback IP with a port ("127.0.0.1:port", "[::1]:port").
// Other hostnames, wildcard and non-loopback addresses are refused.
func Parse(s string) (Addr, error) {
	if rest, ok := strings.CutPrefix(s, "unix:"); ok {
		path := strings.TrimPrefix(rest, "//")
		if !filepath.IsAbs(path) {
			return Addr{}, fmt.Errorf("%w: %q needs an absolute socket path", ErrNotLocal, s)
		}
		return Addr{unix: filepath.Clean(path)}, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Addr{}, fmt.Errorf("%w: %q: %v", ErrNotLocal, s, err)
	}
	if strings.EqualFold(host, "localhost") {
		host = "127.0.0.1"
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return Addr{}, fmt.Errorf("%w: %q is not a loopback address (use localhost, 127.0.0.1 or ::1)", ErrNotLocal, s)
	}
	// An empty port would mean "any" to net.Listen (found by fuzzing).
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return Addr{}, fmt.Errorf("%w: %q has no valid port", ErrNotLocal, s)
	}
	return Addr{tcp: net.JoinHostPort(ip.String(), port)}, nil
}

// MustParse is Parse for constants and tests; it panics on error.
func MustParse(s string) Addr {
	a, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return a
}

// ParseAll parses every address of a list, and applies the uid rule: with
// uids on an allow-list, every address must be a Unix socket.
func ParseAll(list []string, uids int) ([]Addr, error) {
	var out []Addr
	var errs []error
	for _, s := range list {
		a, err := Parse(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, a)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, CheckUIDs(out, uids)
}

// CheckUIDs is the one place of the rule "a uid allow-list needs
// Unix-socket-only listening"; uids is the length of the list.
func CheckUIDs(addrs []Addr, uids int) error {
	if uids == 0 {
		return nil
	}
	for _, a := range addrs {
		if !a.IsUnix() {
			return ErrUIDsNeedUnix
		}
	}
	return nil
}

// Valid reports whether a came from Parse.
func (a Addr) Valid() bool { return a.unix != "" || a.tcp != "" }

// IsUnix reports whether a is a Unix socket.
func (a Addr) IsUnix() bool { return a.unix != "" }

// Network is "unix" or "tcp", for net.Listen.
func (a Addr) Network() string {
	if a.unix != "" {
		return "unix"
	}
	return "tcp"
}

// Address is the socket path or ip:port, for net.Listen.
func (a Addr) Address() string {
	if a.unix != "" {
		return a.unix
	}
	return a.tcp
}

func (a Addr) String() string {
	if a.unix != "" {
		return "unix://" + a.unix
	}
	return a.tcp
}
