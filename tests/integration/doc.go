// Package integration holds the contract tests: the no-material check over
// the core's import graph, the audit contract against a real Postgres
// testcontainer, and tests against real SoftHSM2 and SPIRE. Under CI=true
// none may skip.
package integration
