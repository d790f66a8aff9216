// Command runcwrap is an OCI runtime for Docker on hosts whose capability
// bounding set lacks capabilities that a privileged container or exec asks
// for (seen: Docker 20.10 starts `docker run --privileged` fine there, but
// every `docker exec --privileged`, which kind uses for all node commands,
// fails with "unable to apply caps: operation not permitted"). It removes from the
// container's config.json (create, run) or the exec process JSON every
// capability the bounding set lacks, then runs the real runc with the same
// arguments. Nothing else in the request changes.
//
// kindcluster registers it as an extra Docker runtime only when it finds
// such a capability missing (tests/e2e/kindcluster/caps.go).
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

func main() {
	real := realRunc()
	args := os.Args[1:]
	if err := filter(args); err != nil {
		fmt.Fprintln(os.Stderr, "runcwrap:", err)
	}
	err := syscall.Exec(real, append([]string{real}, args...), os.Environ())
	fmt.Fprintln(os.Stderr, "runcwrap: exec", real+":", err)
	os.Exit(127)
}

func realRunc() string {
	if p := os.Getenv("RUNCWRAP_RUNC"); p != "" {
		return p
	}
	for _, p := range []string{"/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("runc"); err == nil {
		return p
	}
	return "runc"
}

// globalWithValue are runc's global flags that take a value.
var globalWithValue = map[string]bool{"--root": true, "--log": true, "--log-format": true, "--criu": true, "--rootless": true}

// filter finds the command and its spec file and rewrites the capabilities.
func filter(args []string) error {
	allowed, err := bounding()
	if err != nil {
		return err
	}
	var cmd, bundle, process string
	for i := 0; i < len(args); i++ {
		a := args[i]
		value := func() string {
			if _, v, ok := strings.Cut(a, "="); ok {
				return v
			}
			if i+1 < len(args) {
				i++
				return args[i]
			}
			return ""
		}
		name, _, _ := strings.Cut(a, "=")
		switch {
		case cmd == "" && globalWithValue[name]:
			value()
		case cmd == "" && !strings.HasPrefix(a, "-"):
			cmd = a
		case cmd != "" && (name == "--bundle" || name == "-b"):
			bundle = value()
		case cmd != "" && (name == "--process" || name == "-p"):
			process = value()
		}
	}
	switch {
	case (cmd == "create" || cmd == "run") && bundle != "":
		return rewrite(filepath.Join(bundle, "config.json"), true, allowed)
	case cmd == "exec" && process != "":
		return rewrite(process, false, allowed)
	}
	return nil
}

// bounding is the set of capability numbers in this process's bounding set.
func bounding() (func(name string) bool, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			set, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return nil, err
			}
			return func(name string) bool {
				n, known := capNumber[name]
				return !known || set&(1<<n) != 0 // unknown names: leave to runc
			}, nil
		}
	}
	return nil, fmt.Errorf("no CapBnd in /proc/self/status")
}

// rewrite drops the capabilities allowed rejects from a spec (config.json:
// .process.capabilities) or an exec process (.capabilities).
func rewrite(path string, spec bool, allowed func(string) bool) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	proc := doc
	if spec {
		proc, _ = doc["process"].(map[string]any)
	}
	caps, _ := proc["capabilities"].(map[string]any)
	if caps == nil {
		return nil
	}
	changed := false
	for set, list := range caps {
		names, _ := list.([]any)
		kept := make([]any, 0, len(names))
		for _, n := range names {
			if s, _ := n.(string); allowed(s) {
				kept = append(kept, n)
			} else {
				changed = true
			}
		}
		caps[set] = kept
	}
	if !changed {
		return nil
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, st.Mode().Perm())
}

var capNumber = map[string]uint{}

func init() {
	for i, n := range []string{
		"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
		"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
		"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
		"CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
		"CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
		"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
		"CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
		"CAP_CHECKPOINT_RESTORE",
	} {
		capNumber[n] = uint(i)
	}
}
