#!/usr/bin/env bash
# `make e2e-kind`: the end-to-end scenarios on a real kind cluster.
#
#  1. node image: built here from Go modules and Debian packages
#     (scripts/build-kind-node.sh; reused when its input hash matches), or
#     KIND_NODE_IMAGE=published for kind's own image (needs registry access),
#     or KIND_NODE_IMAGE=<ref> for any other;
#  2. images: the project's (scripts/build-images.sh), Postgres
#     (scripts/build-postgres-image.sh) and SPIRE (scripts/build-spire-images.sh),
#     all built locally, loaded into the nodes;
#  3. cluster: one node (E2E_NODES=config keeps every node of KIND_CONFIG),
#     with the workarounds this host needs (tests/e2e/kindcluster detect);
#  4. SPIRE (server with k8s_psat, agent DaemonSet with the k8s workload
#     attestor, one registration entry per ServiceAccount), Postgres, the
#     signer chart (2 replicas, postgres store, migration Job) and the example
#     core with its injected native sidecar, all identities by hostPath;
#  5. the scenarios: go test -tags e2e -run Kind ./tests/e2e (kind_test.go),
#     which print their figures.
# E2E_PREPARE_ONLY=1 stops after the node image, the tools and the SPIRE
# images (what `make test` builds in the background while the Go tests run).
# Logs and events are printed on failure; the cluster is always deleted at
# the end (KEEP_CLUSTER=1 keeps it for a look).
#
# Needs: Docker, Go, root (debootstrap, and on hosts missing capabilities a
# Docker runtime registration). helm and kubectl are built/extracted here.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
KIND_CONFIG=${KIND_CONFIG:-kind-config.yaml}
E2E_NODES=${E2E_NODES:-single}
NS_SIGNER=plexsphere
NS_CORE=apps
TD=example.org
KIND=(go run ./tests/e2e/kindcluster)
tools=$PWD/bin/e2e
mkdir -p "$tools"
export PATH=$tools:$PATH KUBECONFIG=$tools/kubeconfig

t0=$(date +%s)
phase_start=$t0
phase() { # prints how long the previous phase took, then the next one
  local now
  now=$(date +%s)
  echo "e2e-kind: [$((now - t0))s, +$((now - phase_start))s] $*"
  phase_start=$now
}

phase "tools: helm"
(cd tests/e2e/tools && go build -o "$tools/helm" helm.sh/helm/v3/cmd/helm)

case ${KIND_NODE_IMAGE:-} in
"")
  phase "node image (scripts/build-kind-node.sh)"
  node_image=$(./scripts/build-kind-node.sh | tail -1)
  ;;
published)
  node_image=$("${KIND[@]}" default-image)
  phase "node image: kind's published $node_image"
  docker image inspect "$node_image" >/dev/null 2>&1 || docker pull "$node_image"
  ;;
*)
  node_image=$KIND_NODE_IMAGE
  phase "node image: $node_image"
  ;;
esac
# kubectl of the node's own version, from the node image.
c=$(docker create "$node_image")
docker cp "$c:/usr/bin/kubectl" "$tools/kubectl" >/dev/null
docker rm "$c" >/dev/null

if [[ ${E2E_PREPARE_ONLY:-} == 1 ]]; then
  # `make test` runs this part at low priority beside the Go tests (the
  # cold node image is the longest step of CI); the project images are left
  # alone because those tests are using them.
  phase "SPIRE images"
  ./scripts/build-spire-images.sh e2e
  phase "prepared (E2E_PREPARE_ONLY=1): the node image, helm, kubectl and SPIRE images are ready"
  exit 0
fi

phase "images (project, Postgres, SPIRE)"
./scripts/build-images.sh dev
./scripts/build-postgres-image.sh >/dev/null
./scripts/build-spire-images.sh e2e
dump() {
  echo "e2e-kind: FAILED; cluster state, logs and events follow" >&2
  kubectl get nodes,pods,pvc -A -o wide >&2 || true
  local ns pod
  for ns in spire "$NS_SIGNER" "$NS_CORE" kube-system local-path-storage; do
    for pod in $(kubectl -n "$ns" get pods -o name 2>/dev/null); do
      echo "----- $ns/$pod" >&2
      kubectl -n "$ns" logs "$pod" --all-containers --prefix --tail=80 >&2 || true
    done
  done
  kubectl get events -A --sort-by=.lastTimestamp >&2 || true
}
finish() {
  local rc=$?
  ((rc == 0)) || dump
  if [[ ${KEEP_CLUSTER:-} == 1 ]]; then
    echo "e2e-kind: KEEP_CLUSTER=1: cluster kept; KUBECONFIG=$KUBECONFIG; delete with: go run ./tests/e2e/kindcluster delete"
  else
    "${KIND[@]}" delete || true
    phase "cluster deleted"
  fi
  echo "e2e-kind: $([[ $rc == 0 ]] && echo passed || echo FAILED) in $(($(date +%s) - t0))s"
  exit "$rc"
}
trap finish EXIT

phase "cluster ($E2E_NODES node(s), $node_image)"
"${KIND[@]}" delete >/dev/null 2>&1 || true
single=()
[[ $E2E_NODES == single ]] && single=(--single-node)
"${KIND[@]}" create "${single[@]}" --image "$node_image" "$KIND_CONFIG"
"${KIND[@]}" kubeconfig >"$KUBECONFIG"
"${KIND[@]}" load plexsphere/signer:dev plexsphere/sidecar:dev plexsphere/example-core:dev plexsphere/signerctl:dev \
  plexsphere/e2e-probe:dev plexsphere/postgres-test:15 plexsphere/spire-server:e2e plexsphere/spire-agent:e2e
kubectl -n kube-system wait --for=condition=Ready pods --all --timeout=180s >/dev/null

phase "SPIRE"
kubectl apply -f tests/e2e/kind/spire-server.yaml >/dev/null
kubectl -n spire rollout status statefulset/spire-server --timeout=180s
spire_server=(kubectl -n spire exec spire-server-0 -- /usr/local/bin/spire-server)
sock=(-socketPath /tmp/spire-server/private/api.sock)
# The agents' trust bundle, before they start (the server's k8sbundle
# notifier keeps it current afterwards).
"${spire_server[@]}" bundle show "${sock[@]}" >"$tools/spire-bundle.crt"
kubectl -n spire create configmap spire-bundle --from-file=bundle.crt="$tools/spire-bundle.crt" --dry-run=client -o yaml |
  kubectl apply -f - >/dev/null
entry() { # SPIFFE ID path, selectors...
  local id=$1 args=()
  shift
  for s in "$@"; do args+=(-selector "$s"); done
  "${spire_server[@]}" entry create "${sock[@]}" -parentID "spiffe://$TD/k8s/plexsphere-e2e/node" -spiffeID "spiffe://$TD$id" "${args[@]}" >/dev/null
}
# Every agent of this cluster is a parent of the workload entries.
"${spire_server[@]}" entry create "${sock[@]}" -node -spiffeID "spiffe://$TD/k8s/plexsphere-e2e/node" -selector k8s_psat:cluster:plexsphere-e2e >/dev/null
for sa in "$NS_SIGNER/signer" "$NS_SIGNER/signer-bbolt" "$NS_SIGNER/signer-operator" "$NS_CORE/core" "$NS_CORE/intruder"; do
  entry "/ns/${sa%%/*}/sa/${sa##*/}" "k8s:ns:${sa%%/*}" "k8s:sa:${sa##*/}"
done
kubectl apply -f tests/e2e/kind/spire-agent.yaml >/dev/null
kubectl -n spire rollout status daemonset/spire-agent --timeout=180s

phase "Postgres"
kubectl create namespace "$NS_SIGNER" >/dev/null
kubectl create namespace "$NS_CORE" >/dev/null
kubectl -n "$NS_SIGNER" apply -f tests/e2e/kind/postgres.yaml >/dev/null
kubectl -n "$NS_SIGNER" rollout status statefulset/postgres --timeout=180s
pg="postgres.$NS_SIGNER.svc:5432/signer?sslmode=disable"
owner_dsn="postgres://postgres:e2e-owner@$pg"
runtime_dsn="postgres://signer:e2e-runtime@$pg"
kubectl -n "$NS_SIGNER" create secret generic signer-db --from-literal=dsn="$runtime_dsn" >/dev/null
kubectl -n "$NS_SIGNER" create secret generic signer-db-owner --from-literal=dsn="$owner_dsn" >/dev/null
kubectl -n "$NS_SIGNER" create secret generic signer-kek --from-literal=kek="$(head -c32 /dev/urandom | base64)" >/dev/null
kubectl -n "$NS_SIGNER" create serviceaccount signer-operator >/dev/null

phase "signer chart (2 replicas, postgres, migration Job)"
helm install --wait --timeout 5m -n "$NS_SIGNER" signer charts/plexsphere-signer \
  -f tests/e2e/kind/signer-values.yaml --set store.postgres.migration.mode=job
phase "example core with its injected sidecar"
helm install --wait --timeout 5m -n "$NS_CORE" core charts/example-core -f tests/e2e/kind/core-values.yaml

phase "scenarios"
go test -tags e2e -count=1 -v -timeout 30m -run 'Kind' ./tests/e2e/
phase "scenarios done"
