package version

import (
	"crypto/fips140"
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
	for _, tc := range []struct {
		info Info
		want string
	}{
		{Info{Version: "v1", Commit: "c", GoVersion: "go1.26", FIPS: "off", FIPSModule: "latest"}, "p v1 (commit c, go1.26, fips140=off)"},
		{Info{Version: "v1", Commit: "c", GoVersion: "go1.26", FIPS: "on", FIPSModule: "v1.0.0-c2097c7c"}, "p v1 (commit c, go1.26, fips140=on module v1.0.0-c2097c7c)"},
		{Info{Version: "v1", Commit: "c", GoVersion: "go1.26", FIPS: "only", FIPSModule: "v1.0.0-c2097c7c"}, "p v1 (commit c, go1.26, fips140=only module v1.0.0-c2097c7c)"},
	} {
		if s := tc.info.String("p"); s != tc.want {
			t.Errorf("String = %q, want %q", s, tc.want)
		}
	}
}

// The module is the GOFIPS140 build setting when the build had one, and
// the mode follows crypto/fips140.
func TestFIPS(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Settings: []debug.BuildSetting{{Key: "GOFIPS140", Value: "v1.0.0-c2097c7c"}}}
	if got := read(bi, true); got.FIPSModule != "v1.0.0-c2097c7c" {
		t.Fatalf("module from GOFIPS140: %+v", got)
	}
	if got := read(&debug.BuildInfo{}, true); got.FIPSModule != "" {
		t.Fatalf("without GOFIPS140: %+v", got)
	}
	for _, tc := range []struct {
		enabled, enforced bool
		want              string
	}{{false, false, "off"}, {true, false, "on"}, {true, true, "only"}} {
		if got := fipsMode(tc.enabled, tc.enforced); got != tc.want {
			t.Errorf("fipsMode(%v, %v) = %q, want %q", tc.enabled, tc.enforced, got, tc.want)
		}
	}
	if g := Get(); g.FIPS != fipsMode(fips140.Enabled(), fips140.Enforced()) || g.FIPSModule == "" {
		t.Fatalf("Get: %+v", g)
	}
}
