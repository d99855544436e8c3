#!/usr/bin/env bash
# Installs what the test suites need on a fresh Debian machine, and nothing when
# it is all there already. Big builds (kube-apiserver, etcd) are cached under
# ~/.cache/tollgate by e2e/build-control-plane.sh, not here.
set -euo pipefail

need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
command -v go >/dev/null || need_apt+=(golang-go)
{ command -v pg_ctl >/dev/null || [ -x /usr/lib/postgresql/15/bin/pg_ctl ]; } || need_apt+=(postgresql)
command -v curl >/dev/null || need_apt+=(curl)
# init-network's namespace test: iptables (nft backend), iproute2 and setpriv.
command -v iptables-restore >/dev/null || need_apt+=(iptables)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v setpriv >/dev/null || need_apt+=(util-linux)
[ -x /usr/bin/python3 ] || need_apt+=(python3)

if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "install-test-deps: apt-get install ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "install-test-deps: $tool is missing (install Rust with rustup, components rustfmt and clippy)" >&2; exit 1; }
done
echo "install-test-deps: ok" >&2
