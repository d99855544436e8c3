#!/usr/bin/env bash
# Records and compares the host state that `e2e/cluster.sh up --with-node`
# touches, so that a test can prove `down` left the host as it found it.
#
#   e2e/host-state.sh snapshot FILE   write the state to FILE
#   e2e/host-state.sh compare A B     exit 0 if equal; print a diff and exit 1 otherwise
#
# Covered: iptables/ip6tables (every table, without counters), links,
# addresses, routes, mounts, top-level cgroups of every hierarchy (kubepods),
# the sysctls the node changes, CNI/netns/log directories, listening sockets,
# network namespaces, and processes of the e2e cluster.
set -euo pipefail

section() { printf '\n## %s\n' "$1"; }

# The sysctls cluster.sh records and restores (one list for both).
mapfile -t sysctls < <(grep -v "^#" "$(dirname "${BASH_SOURCE[0]}")/node/host-sysctls")
dirs=(/etc/cni /var/lib/cni /run/netns /var/run/netns /var/log/containers /var/log/pods
  /var/lib/kubelet /var/lib/tollgate-e2e /run/tollgate-e2e /run/containerd/s)

snapshot() {
  local t ipt f d p
  for ipt in iptables ip6tables; do
    for t in filter nat mangle raw security; do
      section "$ipt-save -t $t"
      # Comments carry timestamps; counters change with traffic.
      "$ipt-save" -t "$t" 2>&1 | grep -v '^#' | sed -E 's/ \[[0-9]+:[0-9]+\]$//; s/^(-A .*) -c [0-9]+ [0-9]+/\1/' || true
    done
  done
  section "ip link"
  ip -br link | awk '{ print $1, $3 }' | sort
  section "ip addr"
  ip -br addr | sort
  section "ip route"
  ip route show table all | sort
  section "ip netns"
  ip netns list 2>&1 | sort || true
  section "mounts"
  findmnt -rn -o TARGET,FSTYPE,SOURCE | sort
  section "cgroups (top level of every hierarchy)"
  find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -type d | sort
  find /sys/fs/cgroup -maxdepth 3 -type d -name 'kubepods*' | sort
  section "sysctls"
  for f in "${sysctls[@]}"; do
    [ -r "/proc/sys/$f" ] && echo "$f = $(<"/proc/sys/$f")"
  done
  section "directories"
  for d in "${dirs[@]}"; do
    if [ -e "$d" ] || [ -L "$d" ]; then
      find "$d" -maxdepth 3 -printf '%p %y\n' 2>/dev/null | sort
    else
      echo "$d absent"
    fi
  done
  section "listening sockets"
  ss -Hltnu 2>/dev/null | awk '{ print $1, $5 }' | sort -u
  section "e2e cluster processes"
  for p in /proc/[0-9]*; do
    f=$(readlink "$p/exe" 2>/dev/null) || continue
    case "$f" in
      */.cache/tollgate/*|*/coredns|*/containerd-shim*) ;;
      *) tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qE '(/var/lib|/run)/tollgate-e2e|e2e/\.state/cluster' || continue ;;
    esac
    echo "$f"
  done | sort
}

case "${1:-}" in
  snapshot)
    [ "$#" -eq 2 ] || { echo "usage: $0 snapshot FILE" >&2; exit 2; }
    snapshot >"$2.tmp"
    mv "$2.tmp" "$2"
    ;;
  compare)
    [ "$#" -eq 3 ] || { echo "usage: $0 compare A B" >&2; exit 2; }
    if diff -u "$2" "$3"; then
      echo "host-state: $2 and $3 match" >&2
    else
      echo "host-state: $2 and $3 differ" >&2
      exit 1
    fi
    ;;
  *)
    echo "usage: $0 snapshot FILE | compare A B" >&2
    exit 2
    ;;
esac
