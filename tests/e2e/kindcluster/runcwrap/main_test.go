package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// filter finds the spec of create/run (--bundle) and exec (--process) among
// runc's real argument shapes and drops only the capabilities the bounding
// set lacks; everything else in the file stays.
func TestFilterRewritesOnlyMissingCapabilities(t *testing.T) {
	allowedAll, err := bounding()
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for name := range capNumber {
		if !allowedAll(name) {
			missing = append(missing, name)
		}
	}
	caps := []any{"CAP_CHOWN", "CAP_NET_ADMIN", "CAP_SOMETHING_NEW"}
	for _, m := range missing {
		caps = append(caps, m)
	}
	want := []any{"CAP_CHOWN", "CAP_NET_ADMIN", "CAP_SOMETHING_NEW"}

	dir := t.TempDir()
	spec := map[string]any{"ociVersion": "1.0.2", "process": map[string]any{"args": []any{"/sbin/init"},
		"capabilities": map[string]any{"bounding": caps, "effective": caps, "permitted": caps}}}
	writeJSON(t, filepath.Join(dir, "config.json"), spec)
	process := map[string]any{"args": []any{"sh"}, "capabilities": map[string]any{"bounding": caps, "effective": caps}}
	writeJSON(t, filepath.Join(dir, "process.json"), process)

	for _, args := range [][]string{
		{"--root", "/run/docker/runtime-runc/moby", "--log", "/x/log.json", "--log-format", "json", "--systemd-cgroup",
			"create", "--bundle", dir, "--pid-file", "/x/pid", "id"},
		{"--root=/r", "exec", "--process", filepath.Join(dir, "process.json"), "--detach", "id"},
	} {
		if err := filter(args); err != nil {
			t.Fatalf("filter %v: %v", args, err)
		}
	}
	var gotSpec, gotProc map[string]any
	readJSON(t, filepath.Join(dir, "config.json"), &gotSpec)
	readJSON(t, filepath.Join(dir, "process.json"), &gotProc)
	for _, set := range []string{"bounding", "effective", "permitted"} {
		if got := gotSpec["process"].(map[string]any)["capabilities"].(map[string]any)[set]; !reflect.DeepEqual(got, want) {
			t.Errorf("config.json %s: %v, want %v", set, got, want)
		}
	}
	if got := gotProc["capabilities"].(map[string]any)["effective"]; !reflect.DeepEqual(got, want) {
		t.Errorf("process.json effective: %v, want %v", got, want)
	}
	if gotSpec["ociVersion"] != "1.0.2" || gotProc["args"].([]any)[0] != "sh" {
		t.Errorf("other fields changed: %v %v", gotSpec, gotProc)
	}
	t.Logf("bounding set lacks %v", missing)
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}
