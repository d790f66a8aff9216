package bench

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Processes measured from the outside: every component the bench runs as a
// process of its own is a proc, and its CPU time (utime+stime of
// /proc/<pid>/stat, all threads) and peak resident memory (VmHWM) are read
// before and after each measured run. Nothing here runs in production.

// clockTicks is the kernel's USER_HZ (AT_CLKTCK in the auxiliary vector),
// the unit of utime and stime in /proc/<pid>/stat.
var clockTicks = func() float64 {
	raw, err := os.ReadFile("/proc/self/auxv")
	if err == nil {
		for i := 0; i+16 <= len(raw); i += 16 {
			key, val := binary.NativeEndian.Uint64(raw[i:]), binary.NativeEndian.Uint64(raw[i+8:])
			if key == 17 && val > 0 { // AT_CLKTCK
				return float64(val)
			}
		}
	}
	return 100
}()

// procCPU is the CPU time (user+system, all threads) of pid so far, in µs.
func procCPU(pid int) (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields count from after it.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseUint(f[12], 10, 64) // field 15
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return float64(utime+stime) / clockTicks * 1e6, nil
}

// selfCPU is this process's CPU time (getrusage, all threads) in µs: the
// client, and the signer too when it runs in this process.
func selfCPU() (float64, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e3, nil
}

// procField returns what follows "<field>:" on its line of /proc/<pid>/<file>
// (status, io), spaces trimmed.
func procField(pid int, file, field string) (string, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(rest), nil
		}
	}
	return "", fmt.Errorf("%s not in /proc/%d/%s", field, pid, file)
}

// statusKiB reads a "<field>: N kB" line of /proc/<pid>/status.
func statusKiB(pid int, field string) (float64, error) {
	v, err := procField(pid, "status", field)
	if err != nil {
		return 0, err
	}
	kb, err := strconv.Atoi(strings.TrimSuffix(v, " kB"))
	return float64(kb), err
}

// meter is one figure read around a measured run: the change per op of a
// counter (CPU µs, bytes), or with peak the value after the run (reset, if
// it can be, before).
type meter struct {
	unit  string
	read  func() (float64, error) // nil: the meter reports nothing
	peak  bool
	reset func()
	after func(b *testing.B) // called once the run has stopped
}

// cpuMeter reports the CPU µs per op of the process in role's seat.
func cpuMeter(role string, pid int) meter {
	return meter{unit: role + "-cpu-µs/op", read: func() (float64, error) { return procCPU(pid) }}
}

// clientCPU reports this process's CPU µs per op under name (the client,
// or "client+signer" when the signer runs in the bench process).
func clientCPU(name string) meter {
	return meter{unit: name + "-cpu-µs/op", read: selfCPU}
}

// peakRSS reports the peak resident memory (VmHWM) of the process in
// role's seat during the run: the kernel's high-water mark is reset before
// (writing 5 to /proc/<pid>/clear_refs), so each run reports its own.
func peakRSS(role string, pid int) meter {
	return meter{
		unit:  role + "-peak-rss-MiB",
		peak:  true,
		reset: func() { os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0) },
		read: func() (float64, error) {
			kb, err := statusKiB(pid, "VmHWM")
			return kb / 1024, err
		},
	}
}

// proc is a component running as its own process until the benchmark ends.
type proc struct {
	role string
	cmd  *exec.Cmd
	pid  int
	done chan struct{} // closed when it has exited
	stop func()        // stops it now (idempotent; also run when the benchmark ends)
	prof string        // its BENCH_PROFILE_DIR, when profiling
}

// startProc runs bin with args and exactly env (plus PATH and HOME), its
// output to the bench's stderr, stopped (SIGINT, then SIGKILL after 15 s)
// when the benchmark ends.
func startProc(b testing.TB, role, bin string, env []string, args ...string) *proc {
	b.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, env...)
	var prof string
	if profileDir != "" {
		var err error
		if prof, err = os.MkdirTemp(profileDir, role); err != nil {
			b.Fatal(err)
		}
		cmd.Env = append(cmd.Env, "BENCH_PROFILE_DIR="+prof)
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", role, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	p := &proc{role: role, cmd: cmd, pid: cmd.Process.Pid, done: done, prof: prof, stop: sync.OnceFunc(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})}
	b.Cleanup(p.stop)
	return p
}

func (p *proc) cpu() meter { return cpuMeter(p.role, p.pid) }

// syscalls reports the read and write system calls of the process per op
// (syscr, syscw in /proc/<pid>/io: every read or write, sockets and files):
// how well it batches a call's frames into one write.
func (p *proc) syscalls() []meter {
	field := func(name string) func() (float64, error) {
		return func() (float64, error) {
			v, err := procField(p.pid, "io", name)
			if err != nil {
				return 0, err
			}
			return strconv.ParseFloat(v, 64)
		}
	}
	return []meter{
		{unit: p.role + "-reads/op", read: field("syscr")},
		{unit: p.role + "-writes/op", read: field("syscw")},
	}
}

// profileDir is BENCH_PROFILE_DIR: when set, the binaries are built with
// the benchprofile tag and profiled (p.profile) rows leave a CPU profile
// there, named after the row and the process's seat.
var profileDir = os.Getenv("BENCH_PROFILE_DIR")

// profile is a meter that takes a CPU profile of p over each run it is
// given to (SIGUSR1 starts it, SIGUSR2 stops it: internal/testing/sigprof);
// without BENCH_PROFILE_DIR it does nothing.
func (p *proc) profile() meter {
	if profileDir == "" {
		return meter{}
	}
	dir := p.prof
	return meter{
		reset: func() {
			os.Remove(filepath.Join(dir, "cpu.pprof"))
			p.cmd.Process.Signal(syscall.SIGUSR1)
		},
		after: func(b *testing.B) {
			p.cmd.Process.Signal(syscall.SIGUSR2)
			name := filepath.Join(profileDir, strings.NewReplacer("/", "_", "=", "-").Replace(b.Name())+"."+p.role+".pprof")
			deadline := time.Now().Add(30 * time.Second)
			for os.Rename(filepath.Join(dir, "cpu.pprof"), name) != nil {
				if time.Now().After(deadline) {
					b.Fatalf("no CPU profile from the %s", p.role)
				}
				time.Sleep(20 * time.Millisecond) // the profiler flushes on its own goroutine
			}
		},
	}
}
func (p *proc) rss() meter { return peakRSS(p.role, p.pid) }

// The binaries the bench runs, built once per bench binary into binDir (set
// up and removed by TestMain) as the images build them: static, stripped.
var (
	binDir string
	builds sync.Map // name → func() error (sync.OnceValue)
)

var binaries = map[string]string{
	"plexsphere-signer":  "github.com/plexsphere/signer/cmd/plexsphere-signer",
	"plexsphere-sidecar": "github.com/plexsphere/signer/cmd/plexsphere-sidecar",
	"floorsigner":        "github.com/plexsphere/signer/tests/bench/cmd/floorsigner",
	"floorrelay":         "github.com/plexsphere/signer/tests/bench/cmd/floorrelay",
	"flooder":            "github.com/plexsphere/signer/tests/bench/cmd/flooder",
}

// binPath returns the path of one of binaries, built on its first use.
func binPath(b testing.TB, name string) string {
	b.Helper()
	out := filepath.Join(binDir, name)
	build, _ := builds.LoadOrStore(name, sync.OnceValue(func() error {
		args := []string{"build", "-trimpath", "-ldflags=-s -w", "-o", out}
		if profileDir != "" {
			args = append(args, "-tags", "benchprofile") // internal/testing/sigprof
		}
		cmd := exec.Command("go", append(args, binaries[name])...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if msg, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", name, err, msg)
		}
		return nil
	}))
	if err := build.(func() error)(); err != nil {
		b.Fatal(err)
	}
	return out
}

// freeAddr returns a loopback address with a port free at the time of the
// call (for processes that take their listen address from configuration).
func freeAddr(b testing.TB) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitHTTP waits until url answers 200, or the process has exited, or
// timeout has passed.
func waitHTTP(b testing.TB, p *proc, url string, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-p.done:
			b.Fatalf("%s exited before it was ready: %v", p.role, p.cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s not ready after %s (%s: %v)", p.role, timeout, url, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitIdle waits until each process spends under 5 % of a core over half a
// second (a signer replaying a large audit log at start-up, say), so that
// background work does not land in a measurement; it returns how long that
// took.
func waitIdle(b testing.TB, timeout time.Duration, ps ...meter) time.Duration {
	b.Helper()
	start := time.Now()
	const window = 500 * time.Millisecond
	for {
		before := make([]float64, len(ps))
		for i, m := range ps {
			before[i], _ = m.read()
		}
		time.Sleep(window)
		busy := false
		for i, m := range ps {
			v, _ := m.read()
			if v-before[i] > 0.05*float64(window.Microseconds()) {
				busy = true
			}
		}
		if !busy || time.Since(start) > timeout {
			return time.Since(start)
		}
	}
}

func randHex(n int) string {
	k := make([]byte, n)
	if _, err := rand.Read(k); err != nil {
		panic(err)
	}
	return hex.EncodeToString(k)
}
