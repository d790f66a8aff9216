// Command witnesskey makes the note signer key of the kind e2e's witness
// (omniwitness's --private_key_path, golang.org/x/mod/sumdb/note's format)
// and prints the verifier key the signer's witness policy takes (C2SP
// tlog-cosignature/v1, transparency-dev/formats' VKeyToCosignatureV1):
//
//	go run ./tests/e2e/witnesskey --signer-key-file witness.key e2e-witness
//	e2e-witness+1a2b3c4d+BB…
//
// The signer key goes to the file (mode 0600, replaced), never to stdout,
// so that the script passes it to a Secret without it showing in a log.
package main

import (
	"crypto/rand"
	"flag"
	"fmt"
	"os"

	fnote "github.com/transparency-dev/formats/note"
	"golang.org/x/mod/sumdb/note"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "witnesskey:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("witnesskey", flag.ContinueOnError)
	keyFile := fs.String("signer-key-file", "", "write the note signer key here (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *keyFile == "" {
		return fmt.Errorf("usage: witnesskey --signer-key-file FILE <witness name>")
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, fs.Arg(0))
	if err != nil {
		return fmt.Errorf("key %q: %w", fs.Arg(0), err)
	}
	cosig, err := fnote.VKeyToCosignatureV1(vkey)
	if err != nil {
		return err
	}
	tmp := *keyFile + ".new"
	if err := os.WriteFile(tmp, []byte(skey), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, *keyFile); err != nil {
		return err
	}
	fmt.Println(cosig)
	return nil
}
