// Command devcerts writes a throwaway development PKI for `make run` and
// local experiments: a trust-domain CA bundle, X.509-SVIDs for the signer,
// the core's sidecar and an operator, and a key-encryption key for the local
// provider. Never use its output outside a laptop.
package main

import (
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/plexsphere/signer/internal/testing/devpki"
)

func main() {
	dir := flag.String("dir", "", "directory to write into (created)")
	td := flag.String("trust-domain", "example.org", "SPIFFE trust domain")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "devcerts: -dir is required")
		os.Exit(2)
	}
	if err := write(*dir, *td); err != nil {
		fmt.Fprintln(os.Stderr, "devcerts:", err)
		os.Exit(1)
	}
}

// Identities issued, by file name prefix.
var identities = map[string]string{
	"signer":   "/ns/plexsphere/sa/plexsphere-signer",
	"core":     "/ns/plexsphere/sa/plexsphere-core",
	"operator": "/ns/plexsphere/sa/signer-operator",
}

func write(dir, td string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := devpki.NewCA(td)
	if err != nil {
		return err
	}
	for name, path := range identities {
		svid, err := ca.Issue("spiffe://" + td + path)
		if err != nil {
			return err
		}
		if _, err := ca.WriteFiles(dir, name, svid); err != nil {
			return err
		}
	}
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "kek"), []byte(base64.StdEncoding.EncodeToString(kek)+"\n"), 0o600)
}
