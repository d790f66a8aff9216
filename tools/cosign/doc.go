// Package cosign pins the sigstore cosign CLI the tests drive through the
// plexsphere KMS plugin (cmd/sigstore-kms-plexsphere): cosign v3, built as a
// Go tool in this module of its own so that its large dependency graph
// (sigstore-go, the Rekor and Fulcio clients, go-containerregistry, the cloud
// KMS SDKs) never enters the main module's build list. Pure Go: it builds
// with CGO_ENABLED=0. Build with `make cosign`.
package cosign
