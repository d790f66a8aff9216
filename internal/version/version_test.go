package version

import (
	"runtime/debug"
	"testing"
)

func TestReadsBuildInfoAndLdflagsWin(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"}}}
	if got := read(bi, true); got != (Info{Version: "v1.2.3", Commit: "abc123-dirty", GoVersion: "go1.26.8"}) {
		t.Fatalf("from build info: %+v", got)
	}
	if got := read(nil, false); got.Version != "(devel)" || got.Commit != "unknown" {
		t.Fatalf("without build info: %+v", got)
	}
	Version, Commit = "v9.9.9", "deadbeef"
	defer func() { Version, Commit = "", "" }()
	if got := read(bi, true); got.Version != "v9.9.9" || got.Commit != "deadbeef" || got.GoVersion != "go1.26.8" {
		t.Fatalf("-ldflags -X did not win: %+v", got)
	}
	if s := (Info{"v1", "c", "go1.26"}).String("p"); s != "p v1 (commit c, go1.26)" {
		t.Fatalf("String = %q", s)
	}
}
