// Package charts holds the Helm charts (plexsphere-signer, the
// plexsphere-sidecar library chart, example-core) and their tests: each chart
// is rendered with the Helm SDK and every manifest decoded strictly into
// k8s.io/api types before its properties are asserted.
package charts
