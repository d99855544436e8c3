#!/usr/bin/env bash
# Installs what the test suites need on a fresh Debian machine, and nothing when
# it is all there already. Big builds (kube-apiserver, etcd, helm) are cached under
# ~/.cache/tollgate by e2e/build-control-plane.sh and e2e/build-helm.sh, not here.
set -euo pipefail

need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
{ command -v pg_ctl >/dev/null || [ -x /usr/lib/postgresql/15/bin/pg_ctl ]; } || need_apt+=(postgresql)
command -v curl >/dev/null || need_apt+=(curl)
# init-network's namespace test: iptables (nft backend), iproute2 and setpriv.
command -v iptables-restore >/dev/null || need_apt+=(iptables)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v setpriv >/dev/null || need_apt+=(util-linux)
[ -x /usr/bin/python3 ] || need_apt+=(python3)
# The node suite (e2e/cluster.sh up --with-node): its own containerd with runc
# and the CNI plugins, socat (the API server relay), conntrack (kube-proxy);
# the image build (images/build.sh): strip from binutils.
command -v containerd >/dev/null || need_apt+=(containerd)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
command -v socat >/dev/null || need_apt+=(socat)
command -v conntrack >/dev/null || need_apt+=(conntrack)
command -v strip >/dev/null || need_apt+=(binutils)
# scripts/fuzz.sh: libfuzzer-sys compiles libFuzzer (C++).
command -v g++ >/dev/null || need_apt+=(g++)
# The dashboard test (gateway/tests/sdk/test_dashboard.py): headless Chromium,
# and a font for its screenshots.
command -v chromium >/dev/null || need_apt+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)

# images/rootfs.sh downloads the images' Debian packages: it needs package lists.
lists_ok=1
apt-cache policy libc6 2>/dev/null | grep -q 'Candidate: [0-9]' || lists_ok=0

if [ "${#need_apt[@]}" -eq 0 ] && [ "$lists_ok" = 0 ]; then
  apt-get update -qq
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "install-test-deps: apt-get install ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Go builds kube-apiserver, etcd and helm for the e2e suite (e2e/build-*.sh).
# Kubernetes 1.34 needs Go 1.24 or newer; Debian's golang-go (1.19) is too old,
# so a machine without a recent Go is refused here with the reason.
go_minor=$(go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [ -z "$go_minor" ] || [ "$go_minor" -lt 24 ]; then
  echo "install-test-deps: Go 1.24 or newer is required to build the test control plane (found: $(go env GOVERSION 2>/dev/null || echo none))" >&2
  exit 1
fi

for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "install-test-deps: $tool is missing (install Rust with rustup, components rustfmt and clippy)" >&2; exit 1; }
done
# The gateway's SDK suite (scripts/sdk-tests.sh): the official openai and
# anthropic Python SDKs under pytest, and a DevTools client for the dashboard
# test, at the versions gateway/tests/sdk/requirements.txt pins, for the
# python3 on PATH (a no-op when they are installed).
python3 -m pip install --quiet --disable-pip-version-check -r "$(dirname "$0")/../gateway/tests/sdk/requirements.txt" 2>&1 \
  | grep -v "Running pip as the 'root' user" >&2 || true
echo "install-test-deps: ok" >&2
