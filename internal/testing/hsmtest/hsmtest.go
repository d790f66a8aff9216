// Package hsmtest creates real SoftHSM2 tokens for tests: one token
// directory per test process (SoftHSM2 reads SOFTHSM2_CONF once, at
// C_Initialize), a fresh token per call. Without SoftHSM2 installed, tests
// skip saying so, except under CI=true, where they fail.
package hsmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/plexsphere/signer/internal/testing/testenv"
)

// Module is where Debian's softhsm2 package installs the library.
const Module = "/usr/lib/softhsm/libsofthsm2.so"

var (
	once   sync.Once
	dir    string
	setErr error
	n      atomic.Int64
)

// Token is an initialised token.
type Token struct {
	Module, Label, PIN, SOPIN string
	Dir                       string // the token directory of this process
}

func require(t testing.TB) {
	t.Helper()
	missing := ""
	if _, err := os.Stat(Module); err != nil {
		missing = Module
	} else if _, err := exec.LookPath("softhsm2-util"); err != nil {
		missing = "softhsm2-util"
	}
	if missing != "" {
		testenv.Require(t, "SoftHSM2", fmt.Sprintf("SoftHSM2 not installed (%s missing; apt-get install softhsm2)", missing))
	}
}

// Setup points SoftHSM2 at a private token directory; call it (through
// New) before anything in the process loads the library.
func Setup(t testing.TB) string {
	require(t)
	once.Do(func() {
		dir, setErr = os.MkdirTemp("", "softhsm-test-")
		if setErr != nil {
			return
		}
		tokens := filepath.Join(dir, "tokens")
		if setErr = os.Mkdir(tokens, 0o700); setErr != nil {
			return
		}
		conf := filepath.Join(dir, "softhsm2.conf")
		setErr = os.WriteFile(conf, []byte(fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)), 0o600)
		os.Setenv("SOFTHSM2_CONF", conf)
	})
	if setErr != nil {
		t.Fatal(setErr)
	}
	return dir
}

// New initialises a fresh token with its own label and PINs.
func New(t testing.TB) Token { return NewWithPIN(t, "5678") }

// NewWithPIN is New with a chosen user PIN (a distinctive one lets a test
// search logs for it).
func NewWithPIN(t testing.TB, pin string) Token {
	d := Setup(t)
	tok := Token{Module: Module, Label: fmt.Sprintf("signer-test-%d-%d", os.Getpid(), n.Add(1)), PIN: pin, SOPIN: "1234", Dir: filepath.Join(d, "tokens")}
	InitToken(t, "", tok.Label, tok.SOPIN, tok.PIN)
	return tok
}

// InitToken initialises a token with softhsm2-util, under the SoftHSM2
// configuration conf ("" for this process's).
func InitToken(t testing.TB, conf, label, soPIN, pin string) {
	t.Helper()
	require(t)
	cmd := exec.Command("softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", soPIN, "--pin", pin)
	if conf != "" {
		cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("softhsm2-util --init-token: %v\n%s", err, out)
	}
}
