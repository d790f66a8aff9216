// Package version tells which build a binary is: its module version, VCS
// commit and Go version, read from the build information the Go toolchain
// embeds. A release build may set Version and Commit with
// -ldflags '-X github.com/plexsphere/signer/internal/version.Version=v1.2.3'
// when it builds outside a VCS checkout (no commit is stamped then).
package version

import (
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
}

var (
	once sync.Once
	info Info
)

// Get returns the running binary's build.
func Get() Info {
	once.Do(func() { info = read(debug.ReadBuildInfo()) })
	return info
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

// String is the --version line: "<prog> <version> (commit <c>, <go>)".
func (i Info) String(prog string) string {
	return fmt.Sprintf("%s %s (commit %s, %s)", prog, i.Version, i.Commit, i.GoVersion)
}
