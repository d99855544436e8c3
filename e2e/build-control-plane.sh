#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and etcd from the Go module proxy and caches
# them under ~/.cache/tollgate/control-plane/v$K8S_VERSION and .../etcd/v$ETCD_VERSION.
# A warm cache builds nothing. Prints the bin directories on stdout.
#
#   e2e/build-control-plane.sh [--with-node]     (or TOLLGATE_WITH_NODE=1)
#
# With --with-node it also builds kubelet, kube-controller-manager,
# kube-scheduler and kube-proxy into the same control-plane directory, and
# CoreDNS into .../coredns/v$COREDNS_VERSION, printed as a third line.
#
# Kubernetes: a wrapper module requires k8s.io/kubernetes and replaces every
# staging module (derived from that tag's own go.mod) with k8s.io/<m> v0.Y.Z.
# etcd: a wrapper module requires go.etcd.io/etcd/server/v3 and calls etcdmain.
# CoreDNS: a wrapper module calls coremain with only the plugins the e2e
# Corefile uses (the CoreDNS way of choosing plugins at compile time), which
# keeps the cloud-provider plugins' dependencies out of the build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
with_node=${TOLLGATE_WITH_NODE:-0}
for arg in "$@"; do
  case "$arg" in
    --with-node) with_node=1 ;;
    *) echo "usage: $(basename "$0") [--with-node]" >&2; exit 2 ;;
  esac
done
cache=${TOLLGATE_CACHE:-$HOME/.cache/tollgate}
k8s_bin=$cache/control-plane/v$K8S_VERSION
etcd_bin=$cache/etcd/v$ETCD_VERSION
coredns_bin=$cache/coredns/v$COREDNS_VERSION
log() { echo "build-control-plane: $*" >&2; }
command -v go >/dev/null || { log "go is required to build the control plane"; exit 1; }
export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0

# The version is stamped at link time as in upstream's release builds
# (hack/lib/version.sh); a plain `go build` reports v0.0.0-master.
k8s_ldflags() {
  local pkg flags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=${K8S_VERSION%%.*}"
    flags+=" -X $pkg.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $pkg.gitTreeState=clean"
  done
  echo "$flags"
}

# k8s_cached NAME: the cached binary exists and reports the pinned version
# (older caches hold unstamped v0.0.0-master builds; relinking them is quick).
k8s_cached() {
  local bin=$k8s_bin/$1
  [ -x "$bin" ] || return 1
  case "$1" in
    kubectl) "$bin" version --client 2>/dev/null | grep -x "Client Version: v$K8S_VERSION" >/dev/null ;;
    *) [ "$("$bin" --version 2>/dev/null)" = "Kubernetes v$K8S_VERSION" ] ;;
  esac
}

# k8s_wrapper DIR writes the wrapper module's go.mod into DIR.
k8s_wrapper() {
  local work=$1 staging_minor="v0.${K8S_VERSION#1.}" modfile
  modfile=$(cd "$work" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$modfile" ] || { log "could not fetch go.mod of k8s.io/kubernetes v$K8S_VERSION"; exit 1; }
  {
    echo "module tollgate.dev/e2e/controlplane"
    echo
    echo "go 1.24.0"
    echo
    echo "require k8s.io/kubernetes v$K8S_VERSION"
    echo
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/' "$modfile" \
      | awk -v v="$staging_minor" '{ print "replace " $1 " => " $1 " " v }'
  } >"$work/go.mod"
  [ "$(grep -c '^replace' "$work/go.mod")" -ge 20 ] || { log "staging replace list looks wrong"; exit 1; }
}

# build_k8s NAME... builds the commands (k8s.io/kubernetes/cmd/NAME) that are
# not cached yet and moves each into the cache dir once linked.
build_k8s() {
  local name missing=()
  for name in "$@"; do k8s_cached "$name" || missing+=("$name"); done
  [ "${#missing[@]}" -gt 0 ] || return 0
  log "building ${missing[*]} v$K8S_VERSION (cold build, several minutes)"
  local work out pkgs=()
  work=$(mktemp -d)
  out=$(mktemp -d "$cache/build.XXXXXX")
  k8s_wrapper "$work"
  for name in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$name"); done
  local ldflags; ldflags=$(k8s_ldflags)
  (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}")
  mkdir -p "$k8s_bin"
  for name in "${missing[@]}"; do mv -f "$out/$name" "$k8s_bin/$name"; done
  rm -rf "$work" "$out"
}

build_etcd() {
  if [ -x "$etcd_bin/etcd" ]; then return; fi
  log "building etcd v$ETCD_VERSION"
  local work; work=$(mktemp -d)
  cat >"$work/go.mod" <<MOD
module tollgate.dev/e2e/etcd

go 1.24.0

require go.etcd.io/etcd/server/v3 v$ETCD_VERSION
MOD
  cat >"$work/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  mkdir -p "$etcd_bin.tmp"
  (cd "$work" && go mod tidy >/dev/null && go build -trimpath -o "$etcd_bin.tmp/etcd" .)
  rm -rf "$etcd_bin" && mv "$etcd_bin.tmp" "$etcd_bin"
  rm -rf "$work"
}

build_coredns() {
  if [ -x "$coredns_bin/coredns" ] && "$coredns_bin/coredns" -version 2>/dev/null | grep -q "CoreDNS-$COREDNS_VERSION"; then
    return
  fi
  log "building coredns v$COREDNS_VERSION"
  local work; work=$(mktemp -d)
  cat >"$work/go.mod" <<MOD
module tollgate.dev/e2e/coredns

go 1.25.0

require github.com/coredns/coredns v$COREDNS_VERSION
MOD
  # The plugins e2e/cluster.sh's Corefile uses; see the header.
  cat >"$work/main.go" <<'GO'
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

func main() { coremain.Run() }
GO
  mkdir -p "$coredns_bin.tmp"
  (cd "$work" && go mod tidy >/dev/null && go build -trimpath -o "$coredns_bin.tmp/coredns" .)
  rm -rf "$coredns_bin" && mv "$coredns_bin.tmp" "$coredns_bin"
  rm -rf "$work"
}

mkdir -p "$cache"
build_etcd
build_k8s kube-apiserver kubectl
if [ "$with_node" = 1 ]; then
  build_k8s kube-scheduler kube-proxy kubelet kube-controller-manager
  build_coredns
fi
echo "$k8s_bin"
echo "$etcd_bin"
if [ "$with_node" = 1 ]; then echo "$coredns_bin"; fi
