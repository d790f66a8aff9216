package localaddr_test

import (
	"errors"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/plexsphere/signer/internal/localaddr"
)

func TestParse(t *testing.T) {
	for _, bad := range []string{"0.0.0.0:7000", ":7000", "10.1.2.3:7000", "example.com:7000", "localhost.example.com:7000",
		"[::]:7000", "unix:relative.sock", "unix://", "localhost:", "localhost", "127.0.0.1:", "[::ffff:10.0.0.1]:1"} {
		if a, err := localaddr.Parse(bad); !errors.Is(err, localaddr.ErrNotLocal) {
			t.Errorf("Parse(%q) = %v, %v, want ErrNotLocal", bad, a, err)
		}
	}
	for in, want := range map[string]string{"127.0.0.1:7000": "127.0.0.1:7000", "[::1]:7000": "[::1]:7000", "127.0.0.2:1": "127.0.0.2:1",
		"localhost:7000": "127.0.0.1:7000", "LocalHost:7000": "127.0.0.1:7000", "unix:///run/x.sock": "unix:///run/x.sock",
		"unix:/run/x.sock": "unix:///run/x.sock", "unix:///run/../run/x.sock": "unix:///run/x.sock"} {
		a, err := localaddr.Parse(in)
		if err != nil || a.String() != want || !a.Valid() {
			t.Errorf("Parse(%q) = %v, %v, want %s", in, a, err, want)
		}
	}
	if (localaddr.Addr{}).Valid() {
		t.Error("the zero Addr is valid")
	}
}

// The uid rule: a uid allow-list with any TCP address is refused.
func TestUIDsNeedUnix(t *testing.T) {
	if _, err := localaddr.ParseAll([]string{"unix:///a.sock", "localhost:1"}, 1); !errors.Is(err, localaddr.ErrUIDsNeedUnix) {
		t.Fatalf("uids with TCP: %v", err)
	}
	if _, err := localaddr.ParseAll([]string{"unix:///a.sock", "localhost:1"}, 0); err != nil {
		t.Fatalf("no uids: %v", err)
	}
	if as, err := localaddr.ParseAll([]string{"unix:///a.sock"}, 2); err != nil || len(as) != 1 || !as[0].IsUnix() {
		t.Fatalf("uids with a socket: %v %v", as, err)
	}
	if _, err := localaddr.ParseAll([]string{"unix:///a.sock", "10.0.0.1:1"}, 0); !errors.Is(err, localaddr.ErrNotLocal) {
		t.Fatalf("a bad address in a list: %v", err)
	}
}

// A listen address Parse accepts is a loopback IP or an absolute socket
// path, whatever the input.
func FuzzSidecarListen(f *testing.F) {
	for _, s := range []string{"127.0.0.1:7000", "[::1]:1", "unix:///run/x.sock", "unix:/x", "0.0.0.0:1", ":1", "localhost:1", "[::ffff:127.0.0.1]:1", "unix://rel"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := localaddr.Parse(s)
		if err != nil {
			if a.Valid() {
				t.Fatalf("%q refused but valid: %v", s, a)
			}
			return
		}
		switch a.Network() {
		case "unix":
			if !filepath.IsAbs(a.Address()) {
				t.Fatalf("%q accepted as %v", s, a)
			}
		default:
			ap, err := netip.ParseAddrPort(a.Address())
			if err != nil || !ap.Addr().IsLoopback() {
				t.Fatalf("%q accepted as %v", s, a)
			}
		}
	})
}
