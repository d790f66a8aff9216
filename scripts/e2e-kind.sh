#!/usr/bin/env bash
# `make e2e-kind`: the end-to-end scenarios on a real kind cluster.
#
#  1. node image: built here from Go modules and Debian packages
#     (scripts/build-kind-node.sh; reused when its input hash matches), or
#     KIND_NODE_IMAGE=published for kind's own image (needs registry access),
#     or KIND_NODE_IMAGE=<ref> for any other;
#  2. images: the project's (scripts/build-images.sh), Postgres
#     (scripts/build-postgres-image.sh), SPIRE (scripts/build-spire-images.sh)
#     and the witness (scripts/build-witness-image.sh), all built locally,
#     loaded into the nodes;
#  3. cluster: one node (E2E_NODES=config keeps every node of KIND_CONFIG),
#     with the workarounds this host needs (tests/e2e/kindcluster detect);
#  4. SPIRE (server with k8s_psat, agent DaemonSet with the k8s workload
#     attestor, one registration entry per ServiceAccount, each selecting
#     the container that holds the identity), Postgres, a C2SP tlog-witness
#     (omniwitness, namespace witness, its key generated here),
#     the signer chart (2 replicas, postgres store, migration Job, its audit
#     log anchored by the witness and a checkpoint file; installed the way
#     docs/kubernetes.md's first install says: the witness learns the log's
#     key from the signer's first start) and the example core with its
#     injected native sidecar, all identities by hostPath; the charts are
#     installed with the documented docs/examples values and only kind's
#     differences (tests/e2e/kind/*-values.yaml) on top;
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
NS_WITNESS=witness
WITNESS=e2e-witness # the witness's key name and its name in the signer's policy
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

phase "images (project, Postgres, SPIRE, witness)"
./scripts/build-images.sh dev
./scripts/build-postgres-image.sh >/dev/null
./scripts/build-spire-images.sh e2e
./scripts/build-witness-image.sh e2e
dump() {
  echo "e2e-kind: FAILED; cluster state, logs and events follow" >&2
  kubectl get nodes,pods,pvc -A -o wide >&2 || true
  local ns pod
  for ns in spire "$NS_SIGNER" "$NS_WITNESS" "$NS_CORE" kube-system local-path-storage; do
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
  plexsphere/e2e-probe:dev plexsphere/e2e-svidprobe:dev plexsphere/postgres-test:15 plexsphere/spire-server:e2e plexsphere/spire-agent:e2e \
  plexsphere/witness:e2e
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
# One entry per ServiceAccount, each also selecting the one container that
# holds the identity: in a core pod only the sidecar (plexsphere-sidecar),
# never the core container beside it, gets the pod's SVID, even if the core
# reached the agent socket (TestKindOnlyTheSidecarContainerGetsTheSVID).
for sa_container in "$NS_SIGNER/signer/signer" "$NS_SIGNER/signer-bbolt/signer" "$NS_SIGNER/signer-operator/signerctl" \
  "$NS_CORE/core/plexsphere-sidecar" "$NS_CORE/intruder/plexsphere-sidecar"; do
  IFS=/ read -r ns sa container <<<"$sa_container"
  entry "/ns/$ns/sa/$sa" "k8s:ns:$ns" "k8s:sa:$sa" "k8s:container-name:$container"
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

phase "witness (omniwitness, no log yet)"
kubectl create namespace "$NS_WITNESS" >/dev/null
# A fresh note signer key per run; the signer's policy takes its
# tlog-cosignature/v1 verifier key.
go run ./tests/e2e/witnesskey --signer-key-file "$tools/witness.key" "$WITNESS" >"$tools/witness.vkey"
witness_vkey=$(cat "$tools/witness.vkey")
kubectl -n "$NS_WITNESS" create secret generic omniwitness-key --from-file=key="$tools/witness.key" >/dev/null
rm -f "$tools/witness.key"
kubectl -n "$NS_WITNESS" apply -f tests/e2e/kind/witness.yaml >/dev/null
kubectl -n "$NS_WITNESS" rollout status deployment/omniwitness --timeout=180s
echo "e2e-kind: witness $WITNESS at http://omniwitness.$NS_WITNESS.svc, verifier key $witness_vkey"

# The first install (docs/kubernetes.md, "First install"), with the witness
# from the start: the signer creates its checkpoint key at its first start
# and comes up not ready (its log is not anchored: the witness answers 500
# for a log it does not know); its start-up line names the key; the witness
# is given the log and restarted; the signer's next check (every 10 s) is
# cosigned and it becomes ready.
phase "signer chart (2 replicas, postgres, migration Job, witness and checkpoint file), not waiting"
witnesses=$(printf '[{"name":"%s","verifierKey":"%s","url":"http://omniwitness.%s.svc"}]' "$WITNESS" "$witness_vkey" "$NS_WITNESS")
helm install --timeout 5m -n "$NS_SIGNER" signer charts/plexsphere-signer \
  -f docs/examples/signer-values.yaml -f tests/e2e/kind/signer-values.yaml \
  --set-json "audit.witnesses=$witnesses" >/dev/null
startup=""
for _ in $(seq 180); do
  startup=$(kubectl -n "$NS_SIGNER" logs -l app.kubernetes.io/instance=signer -c signer --tail=-1 2>/dev/null |
    grep -m1 '"msg":"audit log"' || true)
  [[ -n $startup ]] && break
  sleep 1
done
if [[ -z $startup ]]; then
  echo "e2e-kind: no signer printed its \"audit log\" start-up line within 180 s" >&2
  exit 1
fi
origin=$(grep -o '"origin":"[^"]*"' <<<"$startup" | head -1 | cut -d'"' -f4)
log_vkey=$(grep -o '"checkpoint_verifier_key":"[^"]*"' <<<"$startup" | cut -d'"' -f4)
echo "e2e-kind: the signer's audit log: origin $origin, checkpoint verifier key $log_vkey"
phase "witness: add the signer's log, restart"
kubectl -n "$NS_WITNESS" create configmap omniwitness-logs --dry-run=client -o yaml \
  --from-literal=logs.yaml="$(printf 'Logs:\n  - Origin: "%s"\n    PublicKey: "%s"\n' "$origin" "$log_vkey")" |
  kubectl -n "$NS_WITNESS" apply -f - >/dev/null
kubectl -n "$NS_WITNESS" rollout restart deployment/omniwitness >/dev/null
kubectl -n "$NS_WITNESS" rollout status deployment/omniwitness --timeout=180s
phase "signer ready (its next check cosigned)"
kubectl -n "$NS_SIGNER" rollout status deployment/signer --timeout=5m
phase "example core with its injected sidecar"
helm install --wait --timeout 5m -n "$NS_CORE" core charts/example-core -f docs/examples/core-values.yaml -f tests/e2e/kind/core-values.yaml

phase "scenarios"
go test -tags e2e -count=1 -v -timeout 30m -run 'Kind' ./tests/e2e/
phase "scenarios done"
