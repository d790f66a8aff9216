package ctl

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
)

// exportStates are the --state choices of keys export: the published states
// (what the JWKS holds). RETIRED is not among them: a retired key is not
// published, so it is not exported either.
var exportStates = map[string][]signerv1.KeyState{
	"active":   {signerv1.KeyState_KEY_STATE_ACTIVE},
	"pending":  {signerv1.KeyState_KEY_STATE_PENDING},
	"previous": {signerv1.KeyState_KEY_STATE_PREVIOUS},
	"all":      {signerv1.KeyState_KEY_STATE_PENDING, signerv1.KeyState_KEY_STATE_ACTIVE, signerv1.KeyState_KEY_STATE_PREVIOUS},
}

// exportJSON is a key in keys export's JSON: the key as every command
// prints it, and its PEM block.
type exportJSON struct {
	*keyJSON
	PEM string `json:"pem"`
}

// keysExport prints public keys as PEM "PUBLIC KEY" blocks (SPKI, RFC 8410)
// for tools that take a PEM public key (openssl, cosign, ssh-keygen -i -m
// PKCS8, ...). The lines naming scope, key id and state are "# " comments
// before each block, not PEM headers: OpenSSL refuses headers in a PUBLIC
// KEY block, and every PEM reader (OpenSSL's, Go's pem.Decode) skips text
// before -----BEGIN.
func (c *cli) keysExport(ctx context.Context, args []string) error {
	fs := c.flagSet("keys export", "[--key-id ID | --state active|pending|previous|all] [--format pem|json] [--out FILE] <scope>",
		"Print the scope's public keys as PEM PUBLIC KEY blocks (SubjectPublicKeyInfo, RFC 8410), each after\n"+
			"'# ' comment lines naming its scope, key id and state (OpenSSL and Go's pem.Decode skip them).\n"+
			"By default the ACTIVE key, the one that signs now; --state all prints every published key (PENDING,\n"+
			"ACTIVE, PREVIOUS), as the JWKS does. A RETIRED key is never exported: it is not published, and asked\n"+
			"for by --key-id it is refused (FailedPrecondition, exit 1). An unknown scope or key id is NotFound (exit 1).\n\n"+
			"Check a signature with OpenSSL: signerctl keys export --out k.pem payments &&\n"+
			"  openssl pkeyutl -verify -pubin -inkey k.pem -rawin -in payload -sigfile sig")
	keyID := fs.String("key-id", "", "export this key (PENDING, ACTIVE or PREVIOUS) instead of choosing by --state")
	state := fs.String("state", "active", "which published keys: active, pending, previous or all (PENDING, ACTIVE and PREVIOUS)")
	format := fs.String("format", "", "pem or json (default: pem, or json with --output json)")
	outFile := fs.String("out", "", "write the keys to this file (replaced) instead of stdout")
	pos, err := c.parse(fs, args, 1)
	if err != nil {
		return err
	}
	stateSet := false
	fs.Visit(func(f *flag.Flag) { stateSet = stateSet || f.Name == "state" })
	if *keyID != "" && stateSet {
		return usageError("keys export: --key-id and --state exclude each other (a key id names one key, whatever its state)")
	}
	want, ok := exportStates[*state]
	if !ok {
		return usageError(fmt.Sprintf("keys export: --state %q: use active, pending, previous or all (RETIRED keys are not published)", *state))
	}
	f := "pem"
	switch {
	case *format == "" && c.cfg.Output == "json", *format == "json":
		f = "json"
	case *format != "" && *format != "pem":
		return usageError(fmt.Sprintf("keys export: --format %q: use pem or json", *format))
	}
	scope := pos[0]
	keys, err := c.listKeys(ctx, scope)
	if err != nil {
		return err
	}
	if len(keys) == 0 {
		return unknownScope(scope, "")
	}
	var chosen []*signerv1.Key
	if *keyID != "" {
		for _, k := range keys {
			if k.KeyId != *keyID {
				continue
			}
			// Only the published states export (exportStates["all"]), so a
			// state this version does not know is refused too, not exported.
			if !slices.Contains(exportStates["all"], k.State) {
				return status.Errorf(codes.FailedPrecondition, "key %s of scope %q is %s: it is not published, so it is not exported (its signatures no longer verify against the scope's keys)", k.KeyId, scope, strings.TrimPrefix(k.State.String(), "KEY_STATE_"))
			}
			chosen = append(chosen, k)
		}
		if len(chosen) == 0 {
			return status.Errorf(codes.NotFound, "scope %q has no key %s (signerctl keys list --scope %s)", scope, *keyID, scope)
		}
	} else {
		for _, k := range keys {
			for _, s := range want {
				if k.State == s {
					chosen = append(chosen, k)
				}
			}
		}
		if len(chosen) == 0 {
			return status.Errorf(codes.NotFound, "scope %q has no %s key (signerctl keys list --scope %s)", scope, strings.ToUpper(*state), scope)
		}
	}
	var out bytes.Buffer
	var js []exportJSON
	for _, k := range chosen {
		block, err := publicKeyPEM(k)
		if err != nil {
			return err
		}
		if f == "json" {
			js = append(js, exportJSON{keyJSON: toJSON(k), PEM: string(block)})
			continue
		}
		fmt.Fprintf(&out, "# scope: %s\n# key-id: %s\n# state: %s\n", k.Scope, k.KeyId, stateName(k.State))
		out.Write(block)
	}
	if f == "json" {
		writeJSON(&out, js)
	}
	return c.emit(*outFile, out.Bytes())
}

// publicKeyPEM is k's public half as a PEM PUBLIC KEY block.
func publicKeyPEM(k *signerv1.Key) ([]byte, error) {
	if len(k.PublicKey) != ed25519.PublicKeySize {
		// Not a key this signer makes: refuse rather than print garbage.
		return nil, fmt.Errorf("key %s of scope %q: the signer answered a %d-byte public key, not an Ed25519 one", k.KeyId, k.Scope, len(k.PublicKey))
	}
	der, err := x509.MarshalPKIXPublicKey(ed25519.PublicKey(k.PublicKey))
	if err != nil {
		return nil, fmt.Errorf("key %s of scope %q: %w", k.KeyId, k.Scope, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}
