// Package spire pins the SPIRE server and agent the tests run. They build as
// Go tools in this module of their own: spire-agent v1.13.3 does not compile
// beside the main module's go-spiffe. Build with `make spire`.
package spire
