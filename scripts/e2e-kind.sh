#!/usr/bin/env bash
# End-to-end on a real kind cluster: create it through kind's Go API, build
# and load the images, install SPIRE (SPIFFE CSI driver) for identities, the
# signer chart and the example core with its injected sidecar, then run
# tests/e2e with the e2e build tag. Logs are dumped on failure; the cluster
# is deleted at the end (KEEP_CLUSTER=1 keeps it).
#
# Needs: Docker, helm and kubectl on PATH, and registry access for the kind
# node image and SPIRE's images. The project machines have none of the last,
# so CI runs the same scenarios on the local Docker engine instead
# (tests/e2e/docker_test.go).
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=(go run ./tests/e2e/kindcluster)
NS_SIGNER=plexsphere
NS_CORE=apps
TD=example.org
export KUBECONFIG
KUBECONFIG=$(mktemp)

for tool in docker helm kubectl; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is required" >&2; exit 2; }
done

dump() {
  echo "e2e-kind: failed; cluster state and logs follow" >&2
  kubectl get pods -A -o wide >&2 || true
  kubectl -n "$NS_SIGNER" logs -l app.kubernetes.io/name=plexsphere-signer --all-containers --tail=200 >&2 || true
  kubectl -n "$NS_CORE" logs -l app.kubernetes.io/name=example-core --all-containers --tail=200 >&2 || true
  kubectl get events -A --sort-by=.lastTimestamp >&2 || true
}
finish() {
  local rc=$?
  ((rc == 0)) || dump
  if [[ ${KEEP_CLUSTER:-} != 1 ]]; then "${KIND[@]}" delete || true; fi
  rm -f "$KUBECONFIG"
  exit "$rc"
}
trap finish EXIT

"${KIND[@]}" create kind-config.yaml
"${KIND[@]}" kubeconfig >"$KUBECONFIG"
./scripts/build-images.sh dev
"${KIND[@]}" load plexsphere/signer:dev plexsphere/sidecar:dev plexsphere/example-core:dev

# Identity: SPIRE with the SPIFFE CSI driver; every pod gets
# spiffe://example.org/ns/<namespace>/sa/<service account>.
helm repo add spiffe https://spiffe.github.io/helm-charts-hardened/ >/dev/null
helm upgrade --install --wait -n spire-system --create-namespace spire-crds spiffe/spire-crds
helm upgrade --install --wait -n spire-system spire spiffe/spire \
  --set global.spire.trustDomain="$TD" --set global.spire.clusterName=plexsphere-e2e

# Postgres for the signer replicas, and the secrets the chart mounts.
kubectl create namespace "$NS_SIGNER"
kubectl create namespace "$NS_CORE"
kubectl -n "$NS_SIGNER" apply -f tests/e2e/kind/postgres.yaml
kubectl -n "$NS_SIGNER" rollout status statefulset/postgres --timeout=180s
kubectl -n "$NS_SIGNER" create secret generic signer-db \
  --from-literal=dsn="postgres://postgres:e2e@postgres.$NS_SIGNER.svc:5432/signer?sslmode=disable"
kubectl -n "$NS_SIGNER" create secret generic signer-kek --from-literal=kek="$(head -c32 /dev/urandom | base64)"

helm upgrade --install --wait -n "$NS_SIGNER" signer charts/plexsphere-signer -f tests/e2e/kind/signer-values.yaml
helm upgrade --install --wait -n "$NS_CORE" core charts/example-core -f tests/e2e/kind/core-values.yaml

go test -tags e2e -count=1 -v -run Kind ./tests/e2e/
