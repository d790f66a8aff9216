#!/usr/bin/env bash
# `make run`: the signer (bbolt store, local provider), the sidecar on a Unix
# socket and the example core, with a dev PKI in $RUN_DIR (default bin/run).
# The core signs and verifies every 2 s through the full path; Ctrl-C stops
# all of them. No external service is needed. The audit log is anchored by a
# checkpoint file in the same directory, with no witnesses (the signer says
# so at start-up: this is a development setup).
#
# signerctl's settings are written to $RUN_DIR/signerctl.env (and printed as
# export lines); the settings a maintenance task such as a prune needs, to
# $RUN_DIR/signer.env. By default each run starts from nothing and removes
# the directory when it stops; RUN_KEEP=1 (make run KEEP=1) keeps the store,
# the KEK, the dev CA and the pinned checkpoint key across runs. The dev
# SVIDs last an hour and are reissued every half hour while it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
# RUN_ prefixed: the signer refuses any unknown SIGNER_* variable it inherits.
RUN_SIGNER_PORT=${RUN_SIGNER_PORT:-18443}
RUN_OPS_PORT=${RUN_OPS_PORT:-19090}
RUN_DIR=${RUN_DIR:-$PWD/bin/run}
RUN_KEEP=${RUN_KEEP:-0}
TD=example.org
SIGNER_ID=spiffe://$TD/ns/plexsphere/sa/plexsphere-signer

dir=$RUN_DIR
keep=()
if [[ $RUN_KEEP == 1 ]]; then
  keep=(-keep)
else
  rm -rf "$dir"
fi
mkdir -p "$dir"
chmod 700 "$dir"

pids=()
cleanup() {
  trap - EXIT INT TERM
  if ((${#pids[@]})); then kill -TERM "${pids[@]}" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  if [[ $RUN_KEEP == 1 ]]; then
    echo "run-local: stopped; kept $dir (RUN_KEEP=1)"
  else
    rm -rf "$dir"
    echo "run-local: stopped; removed $dir (keep it across runs: make run KEEP=1)"
  fi
}
trap cleanup EXIT
trap 'exit 0' INT TERM

"$BIN/devcerts" -dir "$dir" -trust-domain "$TD" "${keep[@]}"
echo "run-local: dev PKI and KEK in $dir"
# Reissues the SVIDs at half their lifetime; the signer, the sidecar and
# signerctl re-read the files.
"$BIN/devcerts" -dir "$dir" -trust-domain "$TD" -keep -renew &
pids+=($!)

# What any plexsphere-signer run on this store needs (the prune that
# signerctl audit export prints: . "$dir/signer.env" first, with make run
# stopped). The checkpoint key is pinned once the first run printed it.
pin=$(cat "$dir/checkpoint.key" 2>/dev/null || true)
cat >"$dir/signer.env" <<EOT
export SIGNER_STORE=bbolt
export SIGNER_BBOLT_PATH=$dir/signer.db
export SIGNER_LOCAL_KEK_FILE=$dir/kek
export SIGNER_CHECKPOINT_LOG=$dir/checkpoints.jsonl
EOT
if [[ -n $pin ]]; then echo "export SIGNER_CHECKPOINT_VERIFIER_KEY=$pin" >>"$dir/signer.env"; fi
(
  # shellcheck source=/dev/null
  . "$dir/signer.env"
  exec "$BIN/plexsphere-signer" \
    --listen "127.0.0.1:$RUN_SIGNER_PORT" --ops-listen "127.0.0.1:$RUN_OPS_PORT" \
    --allow-spiffe-id "spiffe://$TD/ns/plexsphere/sa/plexsphere-core" \
    --rotation-allow-spiffe-id "spiffe://$TD/ns/plexsphere/sa/signer-operator" \
    --svid-cert "$dir/signer.crt" --svid-key "$dir/signer.key" --trust-bundle "$dir/bundle.crt" \
    --bootstrap-scope payments --rotation-prepublish 10s --rotation-verify-only 30s
) &
pids+=($!)

"$BIN/plexsphere-sidecar" \
  --listen "unix://$dir/signer.sock" --upstream "127.0.0.1:$RUN_SIGNER_PORT" \
  --signer-spiffe-id "$SIGNER_ID" \
  --svid-cert "$dir/core.crt" --svid-key "$dir/core.key" --trust-bundle "$dir/bundle.crt" &
pids+=($!)

cat >"$dir/signerctl.env" <<EOT
export SIGNERCTL_SIGNER=127.0.0.1:$RUN_SIGNER_PORT
export SIGNERCTL_SIGNER_SPIFFE_ID=$SIGNER_ID
export SIGNERCTL_SVID_CERT_FILE=$dir/operator.crt
export SIGNERCTL_SVID_KEY_FILE=$dir/operator.key
export SIGNERCTL_TRUST_BUNDLE_FILE=$dir/bundle.crt
EOT
# The checkpoint key as this signer, started a moment ago from this
# directory, reports it (with a kept store, the signer refuses to start
# with another than the one pinned). Only signerctl.env's settings count:
# none the calling shell may have set.
checkpoint_key() (
  while read -r v; do unset "$v"; done < <(compgen -e | grep '^SIGNERCTL_' || true)
  # shellcheck source=/dev/null
  . "$dir/signerctl.env"
  exec "$BIN/signerctl" audit checkpoint-key 2>/dev/null
)
ready=
for _ in $(seq 100); do
  if key=$(checkpoint_key); then
    ready=1
    break
  fi
  if ! kill -0 "${pids[1]}" 2>/dev/null; then
    echo "run-local: the signer stopped (its log is above)" >&2
    exit 1
  fi
  sleep 0.3
done
if [[ -z $ready ]]; then
  echo "run-local: the signer does not answer signerctl audit checkpoint-key on 127.0.0.1:$RUN_SIGNER_PORT" >&2
  exit 1
fi
if [[ -z $pin ]]; then
  echo "$key" >"$dir/checkpoint.key"
  echo "export SIGNER_CHECKPOINT_VERIFIER_KEY=$key" >>"$dir/signer.env"
fi
echo "export SIGNERCTL_CHECKPOINT_KEY=$key" >>"$dir/signerctl.env"

cat <<EOT
run-local: signer on 127.0.0.1:$RUN_SIGNER_PORT (health: curl 127.0.0.1:$RUN_OPS_PORT/readyz), sidecar on unix://$dir/signer.sock
run-local: signerctl's settings, in $dir/signerctl.env (. $dir/signerctl.env, or paste):
$(cat "$dir/signerctl.env")
run-local: then: bin/signerctl keys list
run-local: press Ctrl-C to stop
EOT
"$BIN/core" --signer "unix://$dir/signer.sock" --scope payments --every 2s &
pids+=($!)
wait -n "${pids[@]}"
