// Package kmsplugin is the sigstore KMS plugin behind
// cmd/sigstore-kms-plexsphere: cosign (and any program using
// github.com/sigstore/sigstore's kms.Get) signs with a plexsphere scope's
// ACTIVE key by naming it as --key plexsphere://<scope>.
//
// sigstore runs the plugin once per method (the cliplugin protocol, v1):
// argument 1 is the protocol version, argument 2 the method and its
// options as JSON, stdin the message; the answer is JSON on stdout. The
// plugin reaches the signer the way a core does, through the pod's sidecar
// (PLEXSPHERE_SIDECAR_ADDR), with package client only.
//
// This package never holds private key material and links no server-side
// package: tests/integration/signer_core_binary_no_material_test.go checks
// cmd/sigstore-kms-plexsphere and everything it imports.
package kmsplugin
