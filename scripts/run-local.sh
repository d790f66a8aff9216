#!/usr/bin/env bash
# `make run`: the signer (bbolt store, local provider), the sidecar on a Unix
# socket and the example core, with a throwaway dev PKI in a temp dir. The
# core signs and verifies every 2 s through the full path; Ctrl-C stops all
# three cleanly. No external service is needed. The audit log is anchored by
# a checkpoint file in the same temp dir, with no witnesses (the signer says
# so at start-up: this is a development setup).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
# RUN_ prefixed: the signer refuses any unknown SIGNER_* variable it inherits.
RUN_SIGNER_PORT=${RUN_SIGNER_PORT:-18443}
RUN_OPS_PORT=${RUN_OPS_PORT:-19090}
TD=example.org

dir=$(mktemp -d -t plexsphere-run.XXXXXX)
pids=()
cleanup() {
  trap - EXIT INT TERM
  if ((${#pids[@]})); then kill -TERM "${pids[@]}" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$dir"
  echo "run-local: stopped; removed $dir"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

"$BIN/devcerts" -dir "$dir" -trust-domain "$TD"
echo "run-local: dev PKI and KEK in $dir"

"$BIN/plexsphere-signer" \
  --listen "127.0.0.1:$RUN_SIGNER_PORT" --ops-listen "127.0.0.1:$RUN_OPS_PORT" \
  --allow-spiffe-id "spiffe://$TD/ns/plexsphere/sa/plexsphere-core" \
  --rotation-allow-spiffe-id "spiffe://$TD/ns/plexsphere/sa/signer-operator" \
  --svid-cert "$dir/signer.crt" --svid-key "$dir/signer.key" --trust-bundle "$dir/bundle.crt" \
  --store bbolt --bbolt-path "$dir/signer.db" --local-kek-file "$dir/kek" \
  --checkpoint-log "$dir/checkpoints.jsonl" \
  --bootstrap-scope payments --rotation-prepublish 10s --rotation-verify-only 30s &
pids+=($!)

"$BIN/plexsphere-sidecar" \
  --listen "unix://$dir/signer.sock" --upstream "127.0.0.1:$RUN_SIGNER_PORT" \
  --signer-spiffe-id "spiffe://$TD/ns/plexsphere/sa/plexsphere-signer" \
  --svid-cert "$dir/core.crt" --svid-key "$dir/core.key" --trust-bundle "$dir/bundle.crt" &
pids+=($!)

cat <<EOT
run-local: signer on 127.0.0.1:$RUN_SIGNER_PORT (health: curl 127.0.0.1:$RUN_OPS_PORT/readyz), sidecar on unix://$dir/signer.sock
run-local: operator tools: bin/signerctl --signer 127.0.0.1:$RUN_SIGNER_PORT --signer-spiffe-id spiffe://$TD/ns/plexsphere/sa/plexsphere-signer --svid-cert $dir/operator.crt --svid-key $dir/operator.key --trust-bundle $dir/bundle.crt keys list
run-local: press Ctrl-C to stop
EOT
"$BIN/core" --signer "unix://$dir/signer.sock" --scope payments --every 2s &
pids+=($!)
wait -n "${pids[@]}"
