#!/usr/bin/env bash
# The C2SP tlog-witness image for the kind e2e: omniwitness from
# github.com/transparency-dev/witness, built by `make witness` out of
# tools/witness (its own module; pure Go, CGO_ENABLED=0, so static), FROM
# scratch, non-root, no shell:
#   plexsphere/witness:e2e
# It needs no CA certificates: the e2e's witness makes no outbound call (no
# public witness network config, no distributor, no bastion).
# Usage: scripts/build-witness-image.sh [tag]
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-e2e}
make --no-print-directory witness >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ldd bin/omniwitness >/dev/null 2>&1; then
  echo "build-witness-image: bin/omniwitness is dynamically linked; FROM scratch needs it static (CGO_ENABLED=0, as make witness builds it)" >&2
  exit 1
fi
cp -aL bin/omniwitness "$work/omniwitness"
mkdir -m 1777 "$work/tmp"
cat >"$work/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY omniwitness /omniwitness
COPY tmp /tmp
USER 65532:65532
ENTRYPOINT ["/omniwitness"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build -q -t "plexsphere/witness:$TAG" "$work" >/dev/null
echo "build-witness-image: plexsphere/witness:$TAG ($(du -h "$work/omniwitness" | cut -f1) binary)"
