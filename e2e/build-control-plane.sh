#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and etcd from the Go module proxy and caches
# them under ~/.cache/tollgate/control-plane/v$K8S_VERSION and .../etcd/v$ETCD_VERSION.
# A warm cache builds nothing. Prints the bin directories on stdout.
#
# kube-apiserver: a wrapper module requires k8s.io/kubernetes and replaces every
# staging module (derived from that tag's own go.mod) with k8s.io/<m> v0.Y.Z.
# etcd: a wrapper module requires go.etcd.io/etcd/server/v3 and calls etcdmain.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${TOLLGATE_CACHE:-$HOME/.cache/tollgate}
k8s_bin=$cache/control-plane/v$K8S_VERSION
etcd_bin=$cache/etcd/v$ETCD_VERSION
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

# Cached binaries count only if they report the pinned version (older caches
# hold unstamped v0.0.0-master builds; relinking them is quick).
k8s_cached() {
  [ -x "$k8s_bin/kube-apiserver" ] && [ -x "$k8s_bin/kubectl" ] || return 1
  [ "$("$k8s_bin/kube-apiserver" --version 2>/dev/null)" = "Kubernetes v$K8S_VERSION" ] || return 1
  "$k8s_bin/kubectl" version --client 2>/dev/null | grep -x "Client Version: v$K8S_VERSION" >/dev/null
}

build_k8s() {
  if k8s_cached; then return; fi
  log "building kube-apiserver and kubectl v$K8S_VERSION (cold build, several minutes)"
  local work; work=$(mktemp -d)
  local staging_minor="v0.${K8S_VERSION#1.}"
  local modfile
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
  mkdir -p "$k8s_bin.tmp"
  local ldflags; ldflags=$(k8s_ldflags)
  (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$k8s_bin.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver \
              && go build -trimpath -ldflags "$ldflags" -o "$k8s_bin.tmp/kubectl" k8s.io/kubernetes/cmd/kubectl)
  rm -rf "$k8s_bin" && mv "$k8s_bin.tmp" "$k8s_bin"
  rm -rf "$work"
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

build_etcd
build_k8s
echo "$k8s_bin"
echo "$etcd_bin"
