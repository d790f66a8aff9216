// Command sigstore-kms-plexsphere is a sigstore KMS plugin: with it on PATH,
// cosign signs through the plexsphere signer as
//
//	cosign sign-blob --key plexsphere://<scope> --tlog-upload=false ...
//
// It dials the pod's sidecar (PLEXSPHERE_SIDECAR_ADDR, default
// unix:///run/plexsphere/signer.sock) like any core and holds no private
// key. See docs/cosign.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/plexsphere/signer/internal/kmsplugin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := kmsplugin.Main(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
