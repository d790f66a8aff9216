// Package version tells which build a binary is: its module version, VCS
// commit and Go version, read from the build information the Go toolchain
// embeds. A release build may set Version and Commit with
// -ldflags '-X github.com/plexsphere/signer/internal/version.Version=v1.2.3'
// when it builds outside a VCS checkout (no commit is stamped then).
//
// It also tells whether the binary runs in FIPS 140-3 mode and against which
// Go Cryptographic Module: an auditor reads that from --version, the first
// log line and plexsphere_build_info rather than from how the image was
// built.
package version

import (
	"crypto/fips140"
	"fmt"
	"runtime/debug"
	"sync"
)

// Version and Commit override what the build information says (set with
// -ldflags -X); empty means "from the build information".
var (
	Version string
	Commit  string
)

// Info is one binary's build.
type Info struct {
	Version   string // module version, "(devel)" for a plain go build
	Commit    string // VCS revision, with "-dirty" if the tree was modified; "unknown" without VCS stamping
	GoVersion string
	// FIPS is the FIPS 140-3 mode the binary runs in: "off", "on" (the
	// module's self-tests ran, approved algorithms are used) or "only"
	// (GODEBUG=fips140=only: non-approved algorithms fail, too). A
	// binary built with GOFIPS140 runs "on" unless GODEBUG says otherwise.
	FIPS string
	// FIPSModule is the Go Cryptographic Module the binary was built
	// against: the GOFIPS140 build setting, as "v1.0.0-c2097c7c" (a frozen,
	// validated module), or "latest" (the module in the Go tree, not
	// validated) for a build without GOFIPS140.
	FIPSModule string
}

var (
	once sync.Once
	info Info
)

// Get returns the running binary's build.
func Get() Info {
	once.Do(func() {
		info = read(debug.ReadBuildInfo())
		info.FIPS = fipsMode(fips140.Enabled(), fips140.Enforced())
		if info.FIPSModule == "" {
			info.FIPSModule = fips140.Version()
		}
	})
	return info
}

// fipsMode names the mode crypto/fips140 reports.
func fipsMode(enabled, enforced bool) string {
	switch {
	case enabled && enforced:
		return "only"
	case enabled:
		return "on"
	}
	return "off"
}

func read(bi *debug.BuildInfo, ok bool) Info {
	i := Info{Version: "(devel)", Commit: "unknown", GoVersion: "unknown"}
	if ok {
		i.GoVersion = bi.GoVersion
		if v := bi.Main.Version; v != "" {
			i.Version = v
		}
		var rev string
		var dirty bool
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			case "GOFIPS140":
				// The unique name of the frozen module ("v1.0.0-c2097c7c");
				// fips140.Version says only "v1.0.0".
				if s.Value != "off" {
					i.FIPSModule = s.Value
				}
			}
		}
		if rev != "" {
			i.Commit = rev
			if dirty {
				i.Commit += "-dirty"
			}
		}
	}
	if Version != "" {
		i.Version = Version
	}
	if Commit != "" {
		i.Commit = Commit
	}
	return i
}

// String is the --version line: "<prog> <version> (commit <c>, <go>,
// fips140=<mode>[ module <m>])"; the module is named when the mode is not
// off.
func (i Info) String(prog string) string {
	fips := "fips140=" + i.FIPS
	if i.FIPS != "off" && i.FIPS != "" {
		fips += " module " + i.FIPSModule
	}
	return fmt.Sprintf("%s %s (commit %s, %s, %s)", prog, i.Version, i.Commit, i.GoVersion, fips)
}
