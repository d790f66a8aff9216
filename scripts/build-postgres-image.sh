#!/usr/bin/env bash
# Builds the Postgres image the integration tests start with testcontainers-go.
# No registry is reachable, so the image is assembled FROM scratch out of the
# host's Debian postgresql-15 package: the server binaries, their shared
# libraries (found with ldd), /bin/sh for initdb, and a small static Go
# entrypoint that honours POSTGRES_USER/PASSWORD/DB like the official image.
# Usage: scripts/build-postgres-image.sh [image]   (default plexsphere/postgres-test:15)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${1:-plexsphere/postgres-test:15}
PG=/usr/lib/postgresql/15
if [[ ! -x $PG/bin/postgres ]]; then
  echo "build-postgres-image: $PG/bin/postgres missing: apt-get install postgresql-15" >&2
  exit 1
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
root=$ctx/rootfs

copy() { # copy host paths into the image at the same place
  local f
  for f in "$@"; do
    mkdir -p "$root$(dirname "$f")"
    cp -aL "$f" "$root$f"
  done
}

mkdir -p "$root$PG/bin" "$root$PG/lib"
cp -aL "$PG"/bin/{postgres,initdb,pg_ctl} "$root$PG/bin/"
# Extensions and encodings, without the LLVM JIT (and its 100 MB of deps).
find "$PG/lib" -maxdepth 1 -name '*.so' ! -name 'llvmjit*' -exec cp -aL {} "$root$PG/lib/" \;
copy /usr/share/postgresql/15 /usr/share/zoneinfo /lib64/ld-linux-x86-64.so.2
mkdir -p "$root/bin"
cp -aL /bin/dash "$root/bin/sh"

# Shared libraries of everything copied so far.
mapfile -t libs < <(find "$root$PG" "$root/bin" -type f \( -name '*.so' -o -perm -u+x \) -print0 |
  xargs -0 ldd 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u)
copy "${libs[@]}"

mkdir -p "$root/etc" "$root/tmp" "$ctx/owned/var/lib/postgresql" "$ctx/owned/var/run/postgresql"
chmod 1777 "$root/tmp"
echo 'root:x:0:0::/root:/bin/sh' >"$root/etc/passwd"
echo 'postgres:x:999:999::/var/lib/postgresql:/bin/sh' >>"$root/etc/passwd"
printf 'root:x:0:\npostgres:x:999:\n' >"$root/etc/group"

mkdir -p "$root/usr/local/bin"
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$root/usr/local/bin/docker-entrypoint" ./scripts/postgres-image/entrypoint

cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
LABEL plexsphere.inputs="${POSTGRES_IMAGE_LABEL:-}"
COPY rootfs/ /
COPY --chown=999:999 owned/ /
ENV PGDATA=/var/lib/postgresql/data PATH=$PG/bin:/usr/local/bin:/bin TZ=UTC LANG=C
USER 999:999
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint"]
CMD ["postgres"]
DOCKERFILE

DOCKER_BUILDKIT=0 docker build -q -t "$IMAGE" "$ctx"
echo "build-postgres-image: built $IMAGE"
