#!/usr/bin/env bash
# Regenerates the scratch Go modules the kind node image is built from, one
# per component, pinned to scripts/kind/versions.env. Each records its main
# packages as `tool` lines, so `go build <package>` inside it resolves them
# with checksums. Run after changing a version; commit the result.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck disable=SC1091 # plain VAR=value assignments
. "$here/versions.env"
export GOFLAGS=-mod=mod

module() { # name, version of the module, main packages...
  local name=$1 version=$2 dir=$here/modules/$1
  shift 2
  rm -rf "$dir"
  mkdir -p "$dir"
  (
    cd "$dir"
    go mod init "plexsphere.local/kind/$name" >/dev/null 2>&1
    if [[ $name == kubernetes ]]; then
      # k8s.io/kubernetes points its staging modules at ./staging; as a
      # dependency they must come from the proxy at the matching v0 tag.
      local gomod staging=${version/v1./v0.}
      gomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
      while read -r mod; do
        go mod edit -replace "$mod=$mod@$staging"
      done < <(awk '$2 == "=>" && $3 ~ /^\.\/staging/ {print $1}' "$gomod")
    fi
    local pkg args=()
    for pkg in "$@"; do args+=("$pkg@$version"); done
    go get -tool "${args[@]}"
  )
  echo "update-modules: $name $version"
}

module kubernetes "$KUBE_VERSION" k8s.io/kubernetes/cmd/{kubelet,kubeadm,kubectl,kube-apiserver,kube-controller-manager,kube-scheduler,kube-proxy}
module containerd "$CONTAINERD_VERSION" github.com/containerd/containerd/v2/cmd/{containerd,ctr,containerd-shim-runc-v2}
module crictl "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl
module cni-plugins "$CNI_PLUGINS_VERSION" github.com/containernetworking/plugins/plugins/{ipam/host-local,main/loopback,main/bridge,meta/portmap}
module etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3
module coredns "$COREDNS_VERSION" github.com/coredns/coredns
module kube-router "$KUBE_ROUTER_VERSION" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
module local-path-provisioner "$LOCAL_PATH_PROVISIONER_VERSION" github.com/rancher/local-path-provisioner
