// Package testenv holds what every test helper shares about its
// surroundings: a missing dependency skips a test on a workstation and fails
// it under CI=true (a skipped contract test is a failed one), and the small
// pieces several helpers need (a free port, a buffer a process writes to
// while the test reads it).
package testenv

import (
	"bytes"
	"net"
	"os"
	"sync"
	"testing"
)

// CI reports whether the tests run under CI=true, where nothing may skip.
func CI() bool { return os.Getenv("CI") == "true" }

// Require stops t when why is not empty: a skip naming why, or under
// CI=true a failure saying that what is required.
func Require(t testing.TB, what, why string) {
	t.Helper()
	if why == "" {
		return
	}
	if CI() {
		t.Fatalf("%s is required under CI=true: %s", what, why)
	}
	t.Skipf("skipping: %s", why)
}

// FreePort reserves a loopback port and frees it for the code under test.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// SyncBuffer is a bytes.Buffer safe for a process's output copier and the
// test reading it at once.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
