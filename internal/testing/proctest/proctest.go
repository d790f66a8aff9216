// Package proctest runs the project's binaries as processes in tests: it
// builds them, starts them, reads their JSON log lines from stderr as they
// come, and waits for lines, exit codes and listeners. It also runs a
// SPIFFE Workload API that never issues an SVID (an agent without a
// registration entry for the caller).
package proctest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Main builds the module's package pkg (e.g. "./cmd/plexsphere-signer")
// into a temporary directory for the tests of a package, runs them and
// removes it; call it from TestMain. *bin is the binary's path.
func Main(m *testing.M, pkg string, bin *string) {
	dir, err := os.MkdirTemp("", "proctest")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*bin, err = build(dir, pkg)
	code := 1
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

func build(dir, pkg string) (string, error) {
	root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", fmt.Errorf("go list -m: %w", err)
	}
	bin := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Dir = strings.TrimSpace(string(root))
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	return bin, nil
}

// Line is one JSON log line (Raw is the text; Fields nil if not JSON).
type Line struct {
	Raw    string
	Fields map[string]any
}

// Str returns the field k as a string ("" if absent).
func (l Line) Str(k string) string {
	v, ok := l.Fields[k]
	if !ok {
		return ""
	}
	if s, ok := v.(string); ok {
		return s
	}
	return fmt.Sprint(v)
}

// Proc is a running binary.
type Proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	Stdout bytes.Buffer

	mu      sync.Mutex
	lines   []Line
	changed chan struct{}
	done    chan struct{}
	code    int
}

// Start runs bin with args and exactly env (plus PATH), stopping it when
// the test ends.
func Start(t *testing.T, bin string, env []string, args ...string) *Proc {
	t.Helper()
	p := &Proc{t: t, cmd: exec.Command(bin, args...), changed: make(chan struct{}), done: make(chan struct{})}
	p.cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, env...)
	p.cmd.Stdout = &p.Stdout
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			l := Line{Raw: sc.Text()}
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil {
				l.Fields = m
			}
			p.mu.Lock()
			p.lines = append(p.lines, l)
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
	}()
	go func() {
		<-read
		err := p.cmd.Wait()
		p.code = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -1
		}
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s stderr:\n%s", filepath.Base(bin), p.Stderr())
		}
	})
	return p
}

// Lines returns the lines read so far.
func (p *Proc) Lines() []Line {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Line(nil), p.lines...)
}

// Stderr is everything read from stderr so far.
func (p *Proc) Stderr() string {
	var b strings.Builder
	for _, l := range p.Lines() {
		b.WriteString(l.Raw + "\n")
	}
	return b.String()
}

// WaitLine waits up to timeout for a line that match accepts.
func (p *Proc) WaitLine(timeout time.Duration, match func(Line) bool) (Line, bool) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		p.mu.Lock()
		lines, changed := p.lines[seen:], p.changed
		seen = len(p.lines)
		p.mu.Unlock()
		for _, l := range lines {
			if match(l) {
				return l, true
			}
		}
		select {
		case <-changed:
		case <-p.done:
			// Lines read before the exit are all in by now.
			for _, l := range p.Lines()[seen:] {
				if match(l) {
					return l, true
				}
			}
			return Line{}, false
		case <-deadline.C:
			return Line{}, false
		}
	}
}

// Msg matches a line whose msg contains s.
func Msg(s string) func(Line) bool {
	return func(l Line) bool { return strings.Contains(l.Str("msg"), s) }
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) {
	p.cmd.Process.Signal(sig)
}

// Wait waits up to timeout for the exit and returns its code.
func (p *Proc) Wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		p.t.Fatalf("the process did not exit in %v", timeout)
		return 0
	}
}

// Run runs bin to its end and returns its exit code, stdout and stderr.
func Run(t *testing.T, bin string, env []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	p := Start(t, bin, env, args...)
	code = p.Wait(time.Minute)
	return code, p.Stdout.String(), p.Stderr()
}

// FreeAddr returns a loopback address nothing listens on (just now).
func FreeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// NoSVIDAgent serves the SPIFFE Workload API on a Unix socket and answers
// every X.509-SVID request as a SPIRE agent does for a workload no
// registration entry matches: PermissionDenied "no identity issued". It
// returns the address (unix:///path).
func NoSVIDAgent(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wlapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(s, noSVID{})
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return "unix://" + path
}

type noSVID struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
}

func (noSVID) FetchX509SVID(*workload.X509SVIDRequest, workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	return status.Error(codes.PermissionDenied, "no identity issued")
}

// Get fetches url over plain HTTP and returns the status code and body.
func Get(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}
