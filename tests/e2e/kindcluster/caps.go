package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// capNames are the Linux capabilities by number, as far as Docker's
// privileged mode asks for them.
var capNames = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
	"CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
	"CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
	"CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

// missingCapabilities names the capabilities a privileged container would
// be given that this process's bounding set (the host's, for root) lacks.
func missingCapabilities() ([]string, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		v, ok := strings.CutPrefix(line, "CapBnd:")
		if !ok {
			continue
		}
		set, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("CapBnd %q: %w", v, err)
		}
		var missing []string
		for i, n := range capNames {
			if set&(1<<i) == 0 {
				missing = append(missing, n)
			}
		}
		return missing, nil
	}
	return nil, errors.New("no CapBnd in /proc/self/status")
}

const daemonJSON = "/etc/docker/daemon.json"

// registerRuntime adds the wrapper to the Docker daemon's runtimes (keeping
// every other setting) and reloads the daemon, which picks runtimes up on
// SIGHUP without restarting any container.
func registerRuntime(path string) error {
	cfg := map[string]any{}
	if raw, err := os.ReadFile(daemonJSON); err == nil {
		if err := json.Unmarshal(raw, &cfg); err != nil {
			return fmt.Errorf("%s: %w", daemonJSON, err)
		}
	} else if !os.IsNotExist(err) {
		return err
	}
	runtimes, _ := cfg["runtimes"].(map[string]any)
	if runtimes == nil {
		runtimes = map[string]any{}
	}
	if r, _ := runtimes[runtimeName].(map[string]any); r == nil || r["path"] != path {
		runtimes[runtimeName] = map[string]any{"path": path}
		cfg["runtimes"] = runtimes
		out, err := json.MarshalIndent(cfg, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(daemonJSON+".new", append(out, '\n'), 0o644); err != nil {
			return err
		}
		if err := os.Rename(daemonJSON+".new", daemonJSON); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "kindcluster: registered the %s runtime in %s\n", runtimeName, daemonJSON)
	}
	if registered() {
		return nil
	}
	pid, err := dockerdPID()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload dockerd: %w", err)
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if registered() {
			return nil
		}
	}
	return fmt.Errorf("dockerd did not pick up the %s runtime after a reload", runtimeName)
}

func registered() bool {
	out, err := exec.Command("docker", "info", "--format", "{{json .Runtimes}}").Output()
	return err == nil && strings.Contains(string(out), `"`+runtimeName+`"`)
}

func dockerdPID() (int, error) {
	if raw, err := os.ReadFile("/var/run/docker.pid"); err == nil {
		return strconv.Atoi(strings.TrimSpace(string(raw)))
	}
	out, err := exec.Command("pidof", "dockerd").Output()
	if err != nil {
		return 0, fmt.Errorf("no dockerd pid: %w", err)
	}
	f := strings.Fields(string(out))
	if len(f) != 1 {
		return 0, fmt.Errorf("dockerd pids %q", out)
	}
	return strconv.Atoi(f[0])
}
