#!/usr/bin/env bash
# Builds the kind node image for the e2e cluster from Go modules and Debian
# packages only (no registry is reachable on the project machines, and
# nothing prebuilt is downloaded):
#   - Kubernetes, containerd, crictl, the CNI plugins, etcd, CoreDNS,
#     kube-router and the local-path provisioner from the scratch modules
#     under scripts/kind/modules (versions in scripts/kind/versions.env);
#   - the root filesystem from Debian with debootstrap, laid out as kind's
#     own base image (kind's images/base/files from the kind module);
#   - every image kubeadm and kind start (control plane, etcd, CoreDNS, pause,
#     kube-proxy, kube-router as the CNI, the storage provisioner), tagged as
#     they expect and preloaded into the node's containerd.
# The image is labelled with a hash of all its inputs; when an image with
# that label exists nothing is done. Prints the image name as its last line.
#
# Usage: scripts/build-kind-node.sh [--print-name]
#   --print-name  print the name the current inputs give, build nothing
# Env: KIND_BUILD_DIR (scratch space, default a temp dir under /var/tmp).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091 # plain VAR=value assignments
. scripts/kind/versions.env
export CGO_ENABLED=0 GOFLAGS=-mod=readonly

LABEL=io.plexsphere.kind.inputs
log() { echo "build-kind-node: $*" >&2; }

# The inputs: this script, the versions, the modules, the node's manifests,
# and the Go toolchain that compiles them.
inputs_hash() {
  {
    go version
    find scripts/build-kind-node.sh scripts/kind tests/e2e/pause -type f ! -name '*.md' -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-64
}
hash=$(inputs_hash)
image=plexsphere/kind-node:$KUBE_VERSION-${hash:0:12}
if [[ ${1:-} == --print-name ]]; then
  echo "$image"
  exit 0
fi
if [[ $(docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$image" 2>/dev/null) == "$hash" ]]; then
  log "$image is current (inputs $hash)"
  echo "$image"
  exit 0
fi

# quiet runs a docker command with the classic builder and shows its output
# only when it fails (the CLI warns on every legacy build).
quiet() {
  local out
  if ! out=$(DOCKER_BUILDKIT=0 "$@" 2>&1); then
    echo "$out" >&2
    return 1
  fi
}

start=$(date +%s)
step() { log "[$(($(date +%s) - start))s] $*"; }
work=${KIND_BUILD_DIR:-$(mktemp -d /var/tmp/plexsphere-kind.XXXXXX)}
mkdir -p "$work"
build_container=
cleanup() {
  if [[ -n $build_container ]]; then docker rm -f "$build_container" >/dev/null 2>&1 || true; fi
  if [[ -z ${KIND_BUILD_DIR:-} ]]; then rm -rf "$work"; fi
}
trap cleanup EXIT
bin=$work/bin
mkdir -p "$bin/cni"

# ---- 1. binaries from Go modules -------------------------------------------
gobuild() { # module dir, extra go build args..., packages
  local mod=$1
  shift
  (cd "scripts/kind/modules/$mod" && go build -trimpath "$@")
}
step "Kubernetes $KUBE_VERSION"
# kubeadm chooses image tags from its own version: stamp it like a release.
kv=$KUBE_VERSION minor=${KUBE_VERSION#v1.}
minor=${minor%%.*}
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $p.gitVersion=$kv -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  ld+=" -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.buildDate=1970-01-01T00:00:00Z"
done
gobuild kubernetes -ldflags "$ld" -o "$bin/" \
  k8s.io/kubernetes/cmd/{kubelet,kubeadm,kubectl,kube-apiserver,kube-controller-manager,kube-scheduler,kube-proxy}
step "containerd $CONTAINERD_VERSION"
gobuild containerd -tags 'no_aufs no_zfs no_btrfs no_devmapper' \
  -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" -o "$bin/" \
  github.com/containerd/containerd/v2/cmd/{containerd,ctr,containerd-shim-runc-v2}
step "crictl $CRICTL_VERSION, CNI plugins $CNI_PLUGINS_VERSION, etcd $ETCD_VERSION"
gobuild crictl -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" -o "$bin/" sigs.k8s.io/cri-tools/cmd/crictl
gobuild cni-plugins -ldflags "-s -w" -o "$bin/cni/" \
  github.com/containernetworking/plugins/plugins/{ipam/host-local,main/loopback,main/bridge,meta/portmap}
gobuild etcd -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
step "CoreDNS $COREDNS_VERSION"
gobuild coredns -ldflags "-s -w" -o "$bin/coredns" github.com/coredns/coredns
step "kube-router $KUBE_ROUTER_VERSION, local-path-provisioner $LOCAL_PATH_PROVISIONER_VERSION"
gobuild kube-router -ldflags "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" \
  -o "$bin/kube-router" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
gobuild local-path-provisioner -ldflags "-s -w" -o "$bin/local-path-provisioner" github.com/rancher/local-path-provisioner
step "pause"
go build -trimpath -ldflags "-s -w" -o "$bin/pause" ./tests/e2e/pause

# kubeadm must ask for exactly the tags built below.
want=$(printf '%s\n' "registry.k8s.io/kube-apiserver:$KUBE_VERSION" "registry.k8s.io/kube-controller-manager:$KUBE_VERSION" \
  "registry.k8s.io/kube-scheduler:$KUBE_VERSION" "registry.k8s.io/kube-proxy:$KUBE_VERSION" \
  "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "registry.k8s.io/pause:$PAUSE_TAG" "registry.k8s.io/etcd:$ETCD_TAG" | sort)
got=$("$bin/kubeadm" config images list --kubernetes-version "$KUBE_VERSION" 2>/dev/null | sort)
if [[ $want != "$got" ]]; then
  log "kubeadm $KUBE_VERSION wants other images than scripts/kind/versions.env pins:"
  diff <(echo "$want") <(echo "$got") >&2 || true
  exit 1
fi

# ---- 2. root filesystem from Debian ----------------------------------------
command -v debootstrap >/dev/null || {
  step "installing debootstrap"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
# The first Debian mirror apt is configured with (deb822 or one-line form).
mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}')
[[ -n $mirror ]] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
[[ -n $mirror ]] || { log "no Debian mirror found in /etc/apt"; exit 1; }
rootfs=$work/rootfs
rm -rf "$rootfs"
step "debootstrap $DEBIAN_SUITE from $mirror"
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,ipset,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,curl,jq,procps,runc,e2fsprogs,busybox-static \
  "$DEBIAN_SUITE" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -30 "$work/debootstrap.log" >&2
  exit 1
}

# ---- 3. images kubeadm and kind start ----------------------------------------
# Two small bases, both out of the Debian root filesystem: "certs" (CA
# bundle, passwd) for static binaries, and "net" (+ iptables, ipset,
# conntrack, ip, busybox's sh) for kube-proxy and kube-router.
layer() { # dir: the skeleton every image gets
  mkdir -p "$1/etc/ssl/certs" "$1/tmp"
  chmod 1777 "$1/tmp"
  cp "$rootfs/etc/ssl/certs/ca-certificates.crt" "$1/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$1/etc/group"
}
copy_from_rootfs() { # dest root, rootfs paths...: each path and the libraries it needs
  local dest=$1 p real lib
  shift
  for p in "$@"; do
    real=$(chroot "$rootfs" readlink -f "$p")
    mkdir -p "$dest$(dirname "$real")"
    cp -a "$rootfs$real" "$dest$real"
    if [[ $real != "$p" && ! -e $dest$p ]]; then
      mkdir -p "$dest$(dirname "$p")"
      ln -sf "$real" "$dest$p"
    fi
    while read -r lib; do
      [[ -e $dest$lib ]] && continue
      mkdir -p "$dest$(dirname "$lib")"
      cp -aL "$rootfs$lib" "$dest$lib"
    done < <(chroot "$rootfs" ldd "$real" 2>/dev/null | grep -o '/[^ ]*' | sort -u)
  done
}
netbase=$work/netbase
rm -rf "$netbase"
mkdir -p "$netbase/usr/bin" "$netbase/usr/sbin" "$netbase/usr/lib" "$netbase/usr/lib64" "$netbase/run"
for d in bin sbin lib lib64; do ln -s "usr/$d" "$netbase/$d"; done
layer "$netbase"
mapfile -t xt < <(cd "$rootfs" && find usr/lib/x86_64-linux-gnu/xtables -name '*.so' | sed 's#^#/#')
copy_from_rootfs "$netbase" /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/sbin/ipset \
  /usr/sbin/conntrack /usr/bin/ip /usr/bin/busybox "${xt[@]}"
for n in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf xtables-nft-multi "$netbase/usr/sbin/$n"
  ln -sf xtables-nft-multi "$netbase/usr/sbin/${n/tables/tables-nft}"
  ln -sf xtables-legacy-multi "$netbase/usr/sbin/${n/tables/tables-legacy}"
done
for a in sh cp mv mkdir rm cat ls; do ln -sf busybox "$netbase/usr/bin/$a"; done
cp -a "$rootfs"/etc/{protocols,services,ethertypes,nsswitch.conf} "$netbase/etc/" 2>/dev/null || true

images=$work/images
mkdir -p "$images"
image_tags=()
mkimage() { # tag, base dir (or ""), binary, path in image, Dockerfile lines...
  local tag=$1 base=$2 binary=$3 dest=$4 ctx
  shift 4
  ctx=$images/ctx-${#image_tags[@]}
  rm -rf "$ctx"
  mkdir -p "$ctx/root"
  if [[ -n $base ]]; then cp -a "$base/." "$ctx/root/"; else layer "$ctx/root"; fi
  mkdir -p "$ctx/root$(dirname "$dest")"
  install -m0755 "$binary" "$ctx/root$dest"
  {
    echo "FROM scratch"
    echo "COPY root/ /"
    echo "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    printf '%s\n' "$@"
    echo "LABEL $LABEL=$hash"
  } >"$ctx/Dockerfile"
  quiet docker build -q -t "$tag" "$ctx"
  image_tags+=("$tag")
}
step "images"
for n in kube-apiserver kube-controller-manager kube-scheduler; do
  mkimage "registry.k8s.io/$n:$KUBE_VERSION" "" "$bin/$n" "/usr/local/bin/$n" "ENTRYPOINT [\"/usr/local/bin/$n\"]"
done
mkimage "registry.k8s.io/kube-proxy:$KUBE_VERSION" "$netbase" "$bin/kube-proxy" /usr/local/bin/kube-proxy 'ENTRYPOINT ["/usr/local/bin/kube-proxy"]'
mkimage "registry.k8s.io/etcd:$ETCD_TAG" "" "$bin/etcd" /usr/local/bin/etcd 'ENTRYPOINT ["/usr/local/bin/etcd"]'
mkimage "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "" "$bin/coredns" /coredns 'ENTRYPOINT ["/coredns"]'
mkimage "registry.k8s.io/pause:$PAUSE_TAG" "" "$bin/pause" /pause 'USER 65535:65535' 'ENTRYPOINT ["/pause"]'
# kind's containerd config names its own sandbox image: the same pause.
sandbox=$(sed -n 's/^ *sandbox_image = "\(.*\)"/\1/p' "$(go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir)/images/base/files/etc/containerd/config.toml")
if [[ -n $sandbox && $sandbox != "registry.k8s.io/pause:$PAUSE_TAG" ]]; then
  docker tag "registry.k8s.io/pause:$PAUSE_TAG" "$sandbox"
  image_tags+=("$sandbox")
fi
mkimage "plexsphere/kube-router:$KUBE_ROUTER_VERSION" "$netbase" "$bin/kube-router" /usr/local/bin/kube-router 'ENTRYPOINT ["/usr/local/bin/kube-router"]'
mkimage "plexsphere/local-path-provisioner:$LOCAL_PATH_PROVISIONER_VERSION" "" "$bin/local-path-provisioner" /local-path-provisioner 'ENTRYPOINT ["/local-path-provisioner"]'
helper=$work/helper
rm -rf "$helper"
mkdir -p "$helper/bin"
layer "$helper"
for a in sh mkdir rm chmod ls; do ln -sf busybox "$helper/bin/$a"; done
mkimage "plexsphere/local-path-helper:$LOCAL_PATH_PROVISIONER_VERSION" "$helper" "$rootfs/usr/bin/busybox" /bin/busybox
docker save -o "$work/preload.tar" "${image_tags[@]}"

# ---- 4. the base: kind's node layout on the Debian root ---------------------
step "base image"
kindfiles=$(go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir)/images/base/files
install -m0755 "$kindfiles"/usr/local/bin/* "$rootfs/usr/local/bin/"
mkdir -p "$rootfs"/{kind/bin,LICENSES,etc/containerd,etc/default,etc/sysctl.d,etc/systemd/system/kubelet.service.d,opt/cni/bin,kind/manifests}
install -m0644 "$kindfiles/kind/README.txt" "$rootfs/kind/"
install -m0755 "$kindfiles"/kind/bin/* "$rootfs/kind/bin/"
chmod 0755 "$rootfs/kind" "$rootfs/kind/bin"
install -m0644 "$kindfiles"/LICENSES/* "$rootfs/LICENSES/"
install -m0644 "$kindfiles/etc/crictl.yaml" "$rootfs/etc/"
install -m0644 "$kindfiles"/etc/containerd/* "$rootfs/etc/containerd/"
install -m0644 "$kindfiles"/etc/default/* "$rootfs/etc/default/"
install -m0644 "$kindfiles"/etc/sysctl.d/* "$rootfs/etc/sysctl.d/"
# Not the fuse-overlayfs snapshotter service: kind runs it only when asked
# to, and its gRPC plugin is not built here (the e2e selects overlayfs).
for f in "$kindfiles"/etc/systemd/system/*.service "$kindfiles"/etc/systemd/system/*.slice; do
  [[ $(basename "$f") == containerd-fuse-overlayfs.service ]] || install -m0644 "$f" "$rootfs/etc/systemd/system/"
done
install -m0644 "$kindfiles"/etc/systemd/system/kubelet.service.d/* "$rootfs/etc/systemd/system/kubelet.service.d/"
install -m0755 "$bin"/{containerd,ctr,containerd-shim-runc-v2,crictl} "$rootfs/usr/local/bin/"
install -m0755 "$bin"/cni/* "$rootfs/opt/cni/bin/"
install -m0755 "$bin"/{kubeadm,kubelet,kubectl} "$rootfs/usr/bin/"
echo "$KUBE_VERSION" >"$rootfs/kind/version"
sed -e "s/KUBE_ROUTER_VERSION/$KUBE_ROUTER_VERSION/g" scripts/kind/node/default-cni.yaml >"$rootfs/kind/manifests/default-cni.yaml"
sed -e "s/LOCAL_PATH_PROVISIONER_VERSION/$LOCAL_PATH_PROVISIONER_VERSION/g" scripts/kind/node/default-storage.yaml >"$rootfs/kind/manifests/default-storage.yaml"
# What kind's base Dockerfile does after installing its packages.
chroot "$rootfs" /bin/bash -euc '
  find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete
  rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
    /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
    /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*
  echo ReadKMsg=no >>/etc/systemd/journald.conf
  [ -e /sbin/init ] || ln -s /usr/lib/systemd/systemd /sbin/init
  systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
  systemctl mask systemd-binfmt.service >/dev/null 2>&1
  mkdir -p /etc/kubernetes/manifests
  ctr oci spec | jq ".hooks.createContainer[.hooks.createContainer | length] |= . + {\"path\": \"/kind/bin/mount-product-files.sh\"}" |
    jq "del(.process.rlimits)" >/etc/containerd/cri-base.json
  apt-get clean
  rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log /usr/share/doc/* /usr/share/man/*
'
base=plexsphere/kind-base:build-${hash:0:12}
tar -C "$rootfs" --numeric-owner -c . | docker import - "$base" >/dev/null

# ---- 5. the node: images preloaded into containerd's store ------------------
step "node image: preloading ${#image_tags[@]} images"
build_container=$(docker run -d --entrypoint=/bin/sleep --security-opt seccomp=unconfined "$base" infinity)
docker cp "$work/preload.tar" "$build_container:/preload.tar"
docker exec "$build_container" /bin/bash -euc '
  containerd >/tmp/containerd.log 2>&1 &
  for _ in $(seq 1 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
  ctr --namespace=k8s.io images import --all-platforms --no-unpack --digests /preload.tar >/dev/null
  # --digests also names the archive itself (import-<date>@sha256:...).
  ctr --namespace=k8s.io images ls -q | grep "^import-" | xargs -r ctr --namespace=k8s.io images rm >/dev/null
  ctr --namespace=k8s.io images ls -q | grep -v "^sha256:"
  kill %1; wait || true
  rm -rf /preload.tar /tmp/* /run/containerd'
docker commit "$build_container" "$base-preloaded" >/dev/null
# systemd stops on SIGRTMIN+3; `docker commit --change` cannot set that.
printf '%s\n' "FROM $base-preloaded" 'ENV container=docker' 'STOPSIGNAL SIGRTMIN+3' \
  'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' 'CMD []' "LABEL $LABEL=$hash" |
  quiet docker build -q -t "$image" -
docker rm -f "$build_container" >/dev/null
build_container=
docker rmi "$base-preloaded" "$base" "${image_tags[@]}" >/dev/null 2>&1 || true
step "built $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
# Node images of earlier inputs are a gigabyte each: keep only this one.
docker images --format '{{.Repository}}:{{.Tag}}' plexsphere/kind-node | while read -r old; do
  if [[ $old != "$image" ]]; then docker rmi "$old" >/dev/null 2>&1 && log "removed $old"; fi
done
echo "$image"
