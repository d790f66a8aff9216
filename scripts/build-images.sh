#!/usr/bin/env bash
# `make images`: the project's container images, built locally (no registry
# is reachable). Static binaries FROM scratch, non-root, no shell:
#   plexsphere/signer:dev  plexsphere/sidecar:dev  plexsphere/example-core:dev
#   plexsphere/signerctl:dev (operator CLI, e.g. as a Kubernetes Job)
#   plexsphere/pause:dev (the Docker e2e's network-namespace holder)
#   plexsphere/e2e-probe:dev (the kind e2e's TCP reachability probe)
#   plexsphere/e2e-svidprobe:dev (the kind e2e's Workload API probe)
# and the PKCS#11 variant of the signer, which needs a C library: it is
# assembled FROM scratch out of the cgo binary, the shared libraries ldd
# names, and Debian's SoftHSM2 module (mount a vendor's module for a real HSM):
#   plexsphere/signer-pkcs11:dev
# With GOFIPS140 set (make images-fips), the FIPS 140-3 build of the images an
# operator deploys, tagged <tag>-fips: signer, sidecar, signerctl and
# signer-pkcs11, built against that Go Cryptographic Module; the test-only
# images are left out.
# Usage: [GOFIPS140=v1.0.0] scripts/build-images.sh [tag]
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-dev}
fips=${GOFIPS140:-off}
if [[ $fips != off ]]; then
  export GOFIPS140
  [[ $TAG == *-fips ]] || TAG=$TAG-fips
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The build says which commit it is (--version, the start-up line,
# plexsphere_build_info): stamped explicitly, whatever Go's VCS detection
# finds in this checkout.
pkgv=github.com/plexsphere/signer/internal/version
ldflags="-s -w -X $pkgv.Version=$(git describe --tags --always --dirty 2>/dev/null || echo "$TAG") -X $pkgv.Commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)"

static() { # image, package
  local ctx=$work/$1
  mkdir -p "$ctx"
  CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$ctx/app" "$2"
  cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY app /app
USER 65532:65532
ENTRYPOINT ["/app"]
DOCKERFILE
  DOCKER_BUILDKIT=0 docker build -q -t "plexsphere/$1:$TAG" "$ctx" >/dev/null
  echo "build-images: plexsphere/$1:$TAG ($(du -h "$ctx/app" | cut -f1) binary)"
}

static signer ./cmd/plexsphere-signer
static sidecar ./cmd/plexsphere-sidecar
static signerctl ./cmd/signerctl
if [[ $fips == off ]]; then
  static example-core ./examples/core
  static e2e-probe ./tests/e2e/probe
  static e2e-svidprobe ./tests/e2e/svidprobe
  static pause ./tests/e2e/pause # holds a test "pod's" network namespace
fi

# The PKCS#11 variant: a dynamically linked binary and its libraries.
ctx=$work/signer-pkcs11
root=$ctx/rootfs
mkdir -p "$root/usr/lib/softhsm" "$root/tmp"
chmod 1777 "$root/tmp"
CGO_ENABLED=1 go build -trimpath -ldflags="$ldflags" -tags pkcs11 -o "$root/app" ./cmd/plexsphere-signer
module=/usr/lib/softhsm/libsofthsm2.so
if [[ -e $module ]]; then
  cp -aL "$module" "$root/usr/lib/softhsm/"
fi
mapfile -t libs < <(ldd "$root/app" "$root"/usr/lib/softhsm/*.so 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u)
for lib in "${libs[@]}" /lib64/ld-linux-x86-64.so.2; do
  mkdir -p "$root$(dirname "$lib")"
  cp -aL "$lib" "$root$lib"
done
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
USER 65532:65532
ENTRYPOINT ["/app"]
DOCKERFILE
DOCKER_BUILDKIT=0 docker build -q -t "plexsphere/signer-pkcs11:$TAG" "$ctx" >/dev/null
echo "build-images: plexsphere/signer-pkcs11:$TAG (cgo, with $(basename "$module"))"
if [[ $fips != off ]]; then
  # The image must say what it is: each reports the mode and the module.
  for img in signer sidecar signerctl signer-pkcs11; do
    line=$(docker run --rm "plexsphere/$img:$TAG" --version)
    [[ $line == *"fips140=on module $fips"* ]] || { echo "build-images: plexsphere/$img:$TAG reports \"$line\", not fips140=on module $fips" >&2; exit 1; }
    echo "build-images: plexsphere/$img:$TAG: $line"
  done
fi
