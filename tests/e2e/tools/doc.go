// Package tools pins the command-line tools the kind e2e runs on the host
// (helm), in a module of their own so that they add nothing to the
// project's go.mod: scripts/e2e-kind.sh builds them with
// `go build` in this directory.
package tools
