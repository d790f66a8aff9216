// Package e2e runs the deployment's scenarios end to end.
//
// docker_test.go runs them on the local Docker engine (no kind node image
// can be pulled on the project machines): each "pod" is a sidecar container
// and a core container sharing one network namespace
// (--network container:<sidecar>), the signer replicas and Postgres sit on
// their own network, and only containers attached to it can reach the
// signer, as the chart's NetworkPolicy allows only injected pods. It runs in
// `make test`; under CI=true it fails rather than skips when Docker or the
// images (`make images`) are missing.
//
// kind_test.go (build tag e2e) runs the same scenarios against a real kind
// cluster set up by scripts/e2e-kind.sh.
package e2e
