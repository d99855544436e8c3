#!/usr/bin/env bash
# Builds helm v$HELM_VERSION from the Go module proxy and caches it at
# ~/.cache/tollgate/helm/v$HELM_VERSION/helm. A warm cache builds nothing.
# Prints the path of the helm binary on stdout.
#
# helm's own go.mod has no replace directives, so a wrapper module that
# requires helm.sh/helm/v3 and builds its cmd/helm package is enough. The
# version, and the Kubernetes version `helm template` and `helm lint` assume
# (derived from the client-go helm links, as upstream's Makefile does), are
# stamped at link time; a plain `go build` would claim Kubernetes v1.20 and
# refuse charts that need newer. The stamp file `k8s-version` marks a build
# made this way.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${TOLLGATE_CACHE:-$HOME/.cache/tollgate}
helm_dir=$cache/helm/v$HELM_VERSION
helm_bin=$helm_dir/helm
log() { echo "build-helm: $*" >&2; }

helm_cached() {
  [ -x "$helm_bin" ] && [ -s "$helm_dir/k8s-version" ] || return 1
  "$helm_bin" version --template '{{.Version}}' 2>/dev/null | grep -x "v$HELM_VERSION" >/dev/null
}

if ! helm_cached; then
  command -v go >/dev/null || { log "go is required to build helm"; exit 1; }
  export GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_ENABLED=0
  log "building helm v$HELM_VERSION (cold build, a few minutes)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cat >"$work/go.mod" <<MOD
module tollgate.dev/e2e/helm

go 1.24.0

require helm.sh/helm/v3 v$HELM_VERSION
MOD
  cat >"$work/tools.go" <<'GO'
//go:build tools

package tools

import _ "helm.sh/helm/v3/cmd/helm"
GO
  if ! out=$(cd "$work" && go get "helm.sh/helm/v3@v$HELM_VERSION" 2>&1); then
    log "resolving helm.sh/helm/v3@v$HELM_VERSION failed:"; echo "$out" >&2; exit 1
  fi
  client_go=$(cd "$work" && go list -m -f '{{.Version}}' k8s.io/client-go)
  k8s_minor=$(echo "$client_go" | cut -d. -f2)
  [ -n "$k8s_minor" ] || { log "could not tell which client-go helm links"; exit 1; }
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  mkdir -p "$helm_dir.tmp"
  (cd "$work" && go build -trimpath -ldflags "$ldflags" -o "$helm_dir.tmp/helm" helm.sh/helm/v3/cmd/helm)
  echo "1.$k8s_minor" >"$helm_dir.tmp/k8s-version"
  rm -rf "$helm_dir" && mv "$helm_dir.tmp" "$helm_dir"
  helm_cached || { log "built helm does not report v$HELM_VERSION"; exit 1; }
fi
echo "$helm_bin"
