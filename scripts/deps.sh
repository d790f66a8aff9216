#!/usr/bin/env bash
# What `make test` needs beyond Go, installed or built when missing, so a
# fresh Debian machine with Go, Docker and root runs the whole suite:
#   apt:    protobuf-compiler (generate-check), shellcheck (lint),
#           postgresql-15 (the Postgres test image is assembled from it),
#           softhsm2 (a real PKCS#11 token), gcc (cgo for the pkcs11 provider),
#           openssl (third-party verification of exported keys: signerctl keys export)
#   images: plexsphere/postgres-test:15 (rebuilt only when its inputs change),
#           the project's images from this checkout (make images)
# SPIRE is built by `make spire` (its own module). Prints one line saying
# what it installs; prints nothing else when everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)
command -v shellcheck >/dev/null || need+=(shellcheck)
[[ -x /usr/lib/postgresql/15/bin/postgres ]] || need+=(postgresql-15)
[[ -e /usr/lib/softhsm/libsofthsm2.so ]] || need+=(softhsm2)
command -v gcc >/dev/null || need+=(gcc)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  echo "deps: installing ${need[*]} (apt)"
  if [[ $(id -u) != 0 ]]; then
    echo "deps: run as root, or install them yourself: apt-get install ${need[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "deps: no Docker engine reachable; the Postgres and container tests need one" >&2
  exit 1
fi

# The Postgres image: skipped when an image built from the same inputs exists.
sum=$( (cat scripts/build-postgres-image.sh scripts/postgres-image/entrypoint/*.go; dpkg-query -W postgresql-15) | sha256sum | cut -c1-16)
if [[ $(docker image inspect -f '{{index .Config.Labels "plexsphere.inputs"}}' plexsphere/postgres-test:15 2>/dev/null) != "$sum" ]]; then
  echo "deps: building plexsphere/postgres-test:15"
  POSTGRES_IMAGE_LABEL=$sum ./scripts/build-postgres-image.sh >/dev/null
fi
# The project's images hold this checkout's code: always rebuilt (seconds).
./scripts/build-images.sh dev >/dev/null
