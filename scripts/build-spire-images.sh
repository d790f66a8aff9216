#!/usr/bin/env bash
# The SPIRE server and agent images for the kind e2e, from the binaries
# `make spire` builds out of tools/spire (SPIRE v1.13.3, its own module): no
# registry is reachable, so each is assembled FROM scratch out of the cgo
# binary (the server's SQLite datastore needs cgo) and the shared libraries
# ldd names:
#   plexsphere/spire-server:e2e  plexsphere/spire-agent:e2e
# Usage: scripts/build-spire-images.sh [tag]
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-e2e}
make --no-print-directory spire >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for name in spire-server spire-agent; do
  root=$work/$name/rootfs
  mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc/ssl/certs"
  chmod 1777 "$root/tmp"
  cp -aL "bin/$name" "$root/usr/local/bin/$name"
  cp -aL /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/" 2>/dev/null || true
  printf 'root:x:0:0::/:/sbin/nologin\nnonroot:x:65532:65532::/:/sbin/nologin\n' >"$root/etc/passwd"
  mapfile -t libs < <(ldd "$root/usr/local/bin/$name" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u)
  for lib in "${libs[@]}" /lib64/ld-linux-x86-64.so.2; do
    mkdir -p "$root$(dirname "$lib")"
    cp -aL "$lib" "$root$lib"
  done
  cat >"$work/$name/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
ENTRYPOINT ["/usr/local/bin/$name"]
DOCKERFILE
  DOCKER_BUILDKIT=0 docker build -q -t "plexsphere/$name:$TAG" "$work/$name" >/dev/null
  echo "build-spire-images: plexsphere/$name:$TAG"
done
