// Command nomaterial fails if a binary's first-party import graph can hold an
// Ed25519 private key (see internal/nomaterial). Any module can run it on its
// own main package:
//
//	go run github.com/plexsphere/signer/cmd/nomaterial@latest ./cmd/plexsphere
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/plexsphere/signer/internal/nomaterial"
)

func main() {
	dir := flag.String("C", ".", "module directory the patterns are relative to")
	verbose := flag.Bool("v", false, "list the packages checked")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: nomaterial [-C dir] [-v] packages...")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	findings, checked, err := nomaterial.Scan(*dir, flag.Args()...)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if *verbose {
		for _, p := range checked {
			fmt.Println("checked", p)
		}
	}
	for _, f := range findings {
		fmt.Println(f)
	}
	if len(findings) > 0 {
		fmt.Fprintf(os.Stderr, "nomaterial: %d violation(s) in %d package(s) checked\n", len(findings), len(checked))
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "nomaterial: no private key material in %d first-party package(s)\n", len(checked))
}
