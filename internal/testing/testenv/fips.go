package testenv

import (
	"crypto/fips140"
	"os"
	"strings"
	"testing"

	"github.com/plexsphere/signer/internal/version"
)

// FIPSEnv names the FIPS 140-3 module a test run must use: `make test-fips`
// sets it to the GOFIPS140 it builds with, so a run that is not in FIPS
// mode, or uses another module, fails instead of passing as a plain run.
const FIPSEnv = "PLEXSPHERE_TEST_FIPS140"

// CheckFIPS fails t if the process's FIPS 140-3 mode is not the one FIPSEnv
// asks for; without FIPSEnv it checks that what the binaries report
// (version.Get: --version, the first log line, plexsphere_build_info)
// agrees with crypto/fips140.
func CheckFIPS(t testing.TB) {
	t.Helper()
	v := version.Get()
	if on := v.FIPS != "off"; on != fips140.Enabled() {
		t.Fatalf("version reports fips %q, crypto/fips140.Enabled() = %v", v.FIPS, fips140.Enabled())
	}
	want := os.Getenv(FIPSEnv)
	if want == "" {
		return
	}
	if !fips140.Enabled() {
		t.Fatalf("%s=%s: this run is not in FIPS 140-3 mode (built without GOFIPS140, or GODEBUG=fips140=off)", FIPSEnv, want)
	}
	if got := fips140.Version(); got != want {
		t.Fatalf("%s=%s: the module is %s (GOFIPS140 build setting %q)", FIPSEnv, want, got, v.FIPSModule)
	}
	if !strings.HasPrefix(v.FIPSModule, want) {
		t.Fatalf("version reports module %q, want %s", v.FIPSModule, want)
	}
	if line := v.String("p"); !strings.Contains(line, "fips140="+v.FIPS+" module "+v.FIPSModule) {
		t.Fatalf("--version line %q does not name the mode and module", line)
	}
}
