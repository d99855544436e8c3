#!/usr/bin/env bash
# A throwaway Kubernetes control plane on loopback for the e2e suites:
# etcd plus kube-apiserver, no controller-manager, scheduler or kubelet.
# With --with-node, a real single-node cluster (see "Node mode" below).
#
#   e2e/cluster.sh up [--with-node]  build or reuse the binaries, generate PKI, start, wait for /readyz
#   e2e/cluster.sh down    stop exactly the processes `up` started (pid files), undo what it did
#                          to the host, and remove the state
#   e2e/cluster.sh status  report whether they run; exit 0 if all do, 1 otherwise
#   e2e/cluster.sh env     print `export ...` lines for: eval "$(e2e/cluster.sh env)"
#
# State lives in e2e/.state/cluster (git-ignored); the kubeconfig is e2e/.state/kubeconfig.
# Without a node everything listens on 127.0.0.1 only, on ports picked free at start.
#
# Node mode (`up --with-node`, or TOLLGATE_E2E_WITH_NODE=1) adds, on this host as root:
#   - a bridge cni0 with 198.18.0.1/16 (the node IP), pods in 198.18.0.0/16 (bridge +
#     host-local CNI, no masquerading) and two mangle FORWARD DROP rules so that pod
#     traffic never leaves the machine; Services in 198.19.0.0/16, `kubernetes` at
#     198.19.0.1 (the API server advertises 198.18.0.1; a socat relay forwards that
#     address's port to the loopback listener);
#   - containerd of its own (config e2e/node/containerd.toml; root /var/lib/tollgate-e2e,
#     state and socket /run/tollgate-e2e), kubelet, kube-controller-manager,
#     kube-scheduler, kube-proxy (iptables) and CoreDNS (cluster DNS 198.19.0.10);
#   - every $TOLLGATE_IMAGES_DIR/*.tar (default target/images) imported into
#     containerd's k8s.io namespace; pods use imagePullPolicy: Never.
# `down` undoes all of it: pods, processes, iptables chains, cgroups, mounts, the
# bridge, CNI state, and the sysctls the kubelet and the bridge plugin change.
# e2e/host-state.sh snapshots and compares the host state this touches.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state_root=$here/.state
state=$state_root/cluster
pki=$state/pki
kubeconfig=$state_root/kubeconfig
ready_timeout=${TOLLGATE_E2E_READY_TIMEOUT:-90}
stop_timeout=15
# Components in start order; `down` stops them in reverse.
components=(etcd kube-apiserver)
node_components=(apiserver-relay containerd kube-controller-manager kube-scheduler kube-proxy kubelet coredns)

# Node mode; the addresses are all in 198.18.0.0/15 (benchmarking range), never in
# 10/8, 172.16/12 or 192.168/16.
node_mode=0
node_ip=198.18.0.1
node_name=tollgate-e2e-node
bridge=cni0
pod_cidr=198.18.0.0/16
service_cidr=198.19.0.0/16
apiserver_service_ip=198.19.0.1
cluster_dns=198.19.0.10
node_root=/var/lib/tollgate-e2e
node_run=/run/tollgate-e2e
ctr_sock=$node_run/containerd.sock
images_dir=${TOLLGATE_IMAGES_DIR:-$(cd "$here/.." && pwd)/target/images}
node_templates=$here/node

log() { echo "cluster.sh: $*" >&2; }
# die also records the error in $state/up-error (when the state dir exists), so
# a caller such as run.sh can repeat the cause at the end of a long log.
die() {
  log "error: $*"
  if [ -d "${state:-}" ]; then echo "error: $*" >>"$state/up-error"; fi
  exit 1
}

usage() {
  echo "usage: $(basename "$0") up [--with-node]|down|status|env" >&2
  exit 2
}

# step NAME: logs the time since the previous step (the per-step timings).
step_t=$EPOCHREALTIME
step() {
  local now=$EPOCHREALTIME
  log "step $1: $(awk -v a="$step_t" -v b="$now" 'BEGIN { printf "%.1fs", b - a }')"
  step_t=$now
}

# pid_of NAME prints the recorded pid of a component when that pid is still
# the binary we started (guards against pid reuse); fails otherwise.
pid_of() {
  local name=$1 pid exe
  [ -f "$state/$name.pid" ] || return 1
  pid=$(<"$state/$name.pid")
  [ -n "$pid" ] && [ -f "$state/$name.bin" ] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [ "$exe" = "$(<"$state/$name.bin")" ] || return 1
  echo "$pid"
}

running() { pid_of "$1" >/dev/null; }

all_running() {
  local c
  for c in "${components[@]}"; do running "$c" || return 1; done
}

# A port is free when no socket on any address uses it (`ss`, listening or
# connected). Ports come from below the kernel's ephemeral range so outgoing
# connections can't take them between the check and the bind. Every caller runs
# in a $(subshell), so the ports handed out are remembered in a file: two
# components not yet listening never get the same port.
free_port() {
  local port tries=0 low span taken=$state/taken-ports
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range
  span=$((low - 1 - 20000))
  [ "$span" -ge 1000 ] || die "the kernel's ephemeral port range starts at $low; cluster.sh needs 21000 or more (sysctl net.ipv4.ip_local_port_range)"
  [ "$span" -le 12000 ] || span=12000
  mkdir -p "$state"
  touch "$taken"
  while [ "$tries" -lt 200 ]; do
    tries=$((tries + 1))
    port=$((20000 + RANDOM % span))
    ! grep -qx "$port" "$taken" || continue
    if [ -z "$(ss -Htan "( sport = :$port )" 2>/dev/null)" ] && ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port" >>"$taken"
      echo "$port"
      return 0
    fi
  done
  die "no free port found on 127.0.0.1"
}

tail_logs() {
  local c
  for c in "${components[@]}"; do
    if [ -f "$state/$c.log" ]; then
      echo "----- last 40 lines of $state/$c.log -----" >&2
      tail -n 40 "$state/$c.log" >&2
    fi
  done
}

# start NAME BIN ARGS... runs BIN in the background with its log in the state
# dir and records its pid and binary path.
start() {
  local name=$1 bin=$2
  shift 2
  local pid tries=0
  nohup "$bin" "$@" >"$state/$name.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$state/$name.pid"
  readlink -f "$bin" >"$state/$name.bin"
  # Until the forked shell has exec'd the binary, /proc/PID/exe is bash.
  until running "$name"; do
    tries=$((tries + 1))
    if ! kill -0 "$pid" 2>/dev/null || [ "$tries" -gt 100 ]; then
      tail_logs
      die "$name failed to start (log: $state/$name.log)"
    fi
    sleep 0.05
  done
}

# wait_until SECONDS DESCRIPTION COMMAND... polls COMMAND every 0.2s; fails
# with the logs' tail if a component dies or time runs out.
wait_until() {
  local timeout=$1 what=$2 deadline c
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@"; do
    for c in "${components[@]}"; do
      if [ -f "$state/$c.pid" ] && ! running "$c"; then
        tail_logs
        { echo "last lines of $c.log:"; tail -n 12 "$state/$c.log" 2>/dev/null; } >>"$state/up-error"
        die "$c exited while waiting for $what (log: $state/$c.log)"
      fi
    done
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail_logs
      die "timed out after ${timeout}s waiting for $what"
    fi
    sleep 0.2
  done
}

gen_pki() {
  mkdir -p "$pki"
  (
    cd "$pki"
    umask 077
    # ca NAME CN: a self-signed P-256 CA.
    ca() {
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$1.key" -out "$1.crt" -days 30 -subj "/CN=$2" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    }
    # sign NAME SUBJECT EXTENSIONS [CA]: a P-256 key and a certificate from the CA.
    sign() {
      local ca=${4:-ca}
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial \
        -days 30 -sha256 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    ca ca tollgate-e2e-ca
    sign apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:$apiserver_service_ip,IP:$node_ip"
    sign admin "/O=system:masters/CN=tollgate-e2e-admin" "$client"

    # The aggregation layer: the API server proxies to aggregated APIs with
    # this client certificate, which they trust through the front-proxy CA
    # (published in kube-system/extension-apiserver-authentication).
    ca front-proxy-ca tollgate-e2e-front-proxy-ca
    sign front-proxy-client "/CN=front-proxy-client" "$client" front-proxy-ca

    if [ "$node_mode" = 1 ]; then
      sign kubelet "/O=system:nodes/CN=system:node:$node_name" "$client"
      sign kube-controller-manager "/CN=system:kube-controller-manager" "$client"
      sign kube-scheduler "/CN=system:kube-scheduler" "$client"
      sign kube-proxy "/CN=system:kube-proxy" "$client"
    fi

    # ServiceAccount token signing pair (RS256, the API server's default).
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
  ) || die "generating certificates with openssl failed"
}

b64() { base64 -w0 <"$1"; }

# write_kubeconfig FILE SERVER CERT: a kubeconfig for the client certificate CERT.
write_kubeconfig() {
  local file=$1 server=$2 cert=$3 tmp=$1.tmp
  (
    umask 077
    cat >"$tmp" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: tollgate-e2e
  cluster:
    server: $server
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: tollgate-e2e-$cert
  user:
    client-certificate-data: $(b64 "$pki/$cert.crt")
    client-key-data: $(b64 "$pki/$cert.key")
contexts:
- name: tollgate-e2e
  context:
    cluster: tollgate-e2e
    user: tollgate-e2e-$cert
current-context: tollgate-e2e
KUBECONFIG
  )
  mv "$tmp" "$file"
}

etcd_healthy() {
  local body
  body=$(curl -fsS --max-time 2 "http://127.0.0.1:$etcd_client_port/health" 2>/dev/null) || return 1
  [[ $body == *'"health":"true"'* ]]
}

apiserver_ready() {
  curl -fsS --max-time 3 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://127.0.0.1:$apiserver_port/readyz" >/dev/null 2>&1
}

# Fails if any process we started listens on anything but loopback (and, in
# node mode, the bridge address).
check_loopback_only() {
  command -v ss >/dev/null || { log "ss not found; skipping the loopback-only listener check"; return 0; }
  local c pid bad allowed='^(127\.0\.0\.1|\[::1\]):'
  [ "$node_mode" = 0 ] || allowed='^(127\.0\.0\.1|\[::1\]|198\.18\.0\.1):'
  for c in "${components[@]}"; do
    pid=$(pid_of "$c") || continue
    bad=$(ss -Hltnup 2>/dev/null | grep -F "pid=$pid," | awk '{print $5}' | grep -v -E "$allowed" || true)
    [ -z "$bad" ] || die "$c listens beyond loopback: $bad"
  done
}

kc() { "$kubectl_bin" --kubeconfig "$kubeconfig" "$@"; }

# ---------------------------------------------------------------------------
# Node mode

# The sysctls the bridge plugin (ip_forward), the kubelet (kernel tunables it
# sets unless protectKernelDefaults) and kube-proxy may change; `up` records
# them and `down` writes the recorded values back.
mapfile -t node_sysctls < <(grep -v "^#" "$here/node/host-sysctls")
# Directories that containerd, the CNI library or the kubelet create outside
# our own roots when missing (the kubelet's device-plugin socket is always
# /var/lib/kubelet/device-plugins/kubelet.sock, whatever --root-dir says);
# `down` removes those `up` created, once empty.
node_host_dirs=(/var/lib/kubelet/device-plugins /var/lib/kubelet /run/containerd/s /run/containerd/fifo /run/containerd /var/log/containers
  /var/log/pods /var/lib/cni/results /var/lib/cni /run/netns /etc/cni/net.d /etc/cni)
# The two DROP rules keeping pod traffic on this machine. In mangle FORWARD,
# which runs before filter FORWARD, so that no ACCEPT kube-proxy inserts there
# (KUBE-FORWARD) comes first.
forward_rules=("-i $bridge ! -o $bridge" "-o $bridge ! -i $bridge")
forward_comment="tollgate-e2e: pod traffic stays on this host"

node_record_host() {
  local before=$state/host-before k f d
  mkdir -p "$before"
  : >"$before/sysctls"
  for k in "${node_sysctls[@]}"; do
    f=/proc/sys/$k
    [ -r "$f" ] && echo "$k $(<"$f")" >>"$before/sysctls"
  done
  : >"$before/dirs"
  for d in "${node_host_dirs[@]}"; do
    [ -e "$d" ] && echo "$d" >>"$before/dirs"
  done
  return 0
}

node_restore_host() {
  local before=$state/host-before k v d
  if [ -f "$before/sysctls" ]; then
    while read -r k v; do
      [ "$(cat "/proc/sys/$k" 2>/dev/null)" = "$v" ] || { echo "$v" >"/proc/sys/$k" 2>/dev/null || log "could not restore $k to $v"; }
    done <"$before/sysctls"
  fi
  # Files the CNI library caches per attachment (network name, sandbox id,
  # interface): those of our network and of our sandboxes' loopback.
  rm -f /var/lib/cni/results/tollgate-e2e-* 2>/dev/null || true
  if [ -f "$state/sandbox-ids" ]; then
    while read -r k; do
      [ -n "$k" ] && rm -f /var/lib/cni/results/*-"$k"-* 2>/dev/null
    done <"$state/sandbox-ids"
  fi
  if [ -f "$before/dirs" ]; then
    for d in "${node_host_dirs[@]}"; do
      grep -qxF "$d" "$before/dirs" && continue
      [ -d "$d" ] || continue
      case "$d" in
        /var/log/containers) find "$d" -maxdepth 1 -type l -lname "$node_root/*" -delete 2>/dev/null || true ;;
        /var/lib/kubelet/device-plugins) rm -f "$d/kubelet.sock" "$d/kubelet_internal_checkpoint" ;;
      esac
      rmdir "$d" 2>/dev/null || log "left $d in place: not empty"
    done
  fi
}

render() { # render TEMPLATE OUT: substitutes the @VARS@ of e2e/node templates
  sed -e "s|@ROOT@|$node_root|g; s|@RUN@|$node_run|g; s|@NODE@|$node_root|g" \
      -e "s|@CNI_CONF_DIR@|$node_root/cni/net.d|g; s|@IPAM_DIR@|$node_root/cni/networks|g" \
      -e "s|@PKI@|$pki|g; s|@KUBECONFIG@|$kubeconfig|g" \
      -e "s|@KUBELET_PORT@|${kubelet_port:-}|g; s|@KUBELET_HEALTHZ_PORT@|${kubelet_healthz_port:-}|g" \
      -e "s|@READY_PORT@|${coredns_ready_port:-}|g" \
      "$node_templates/$1" >"$2"
}

node_preflight() {
  [ "$(id -u)" = 0 ] || die "--with-node needs root"
  local c
  for c in containerd containerd-shim-runc-v2 runc ctr iptables ip6tables iptables-save ip socat findmnt; do
    command -v "$c" >/dev/null || die "--with-node needs $c (Debian: containerd runc iptables iproute2 socat)"
  done
  for c in bridge host-local loopback; do
    [ -x "/usr/lib/cni/$c" ] || die "--with-node needs the CNI plugin /usr/lib/cni/$c (Debian: containernetworking-plugins)"
  done
  ! ip link show "$bridge" >/dev/null 2>&1 || die "a network interface $bridge exists already (not made by this script); remove it first"
  if [ -e "$node_root" ] || [ -e "$node_run" ]; then die "$node_root or $node_run exists already; run: $0 down"; fi
  [ -f "$images_dir/pause.tar" ] || die "no pause image at $images_dir/pause.tar (build the e2e images first, or set TOLLGATE_IMAGES_DIR)"
  [ -f "$images_dir/app.tar" ] || die "no app image at $images_dir/app.tar (build the e2e images first, or set TOLLGATE_IMAGES_DIR)"
}

node_network_up() {
  # The bridge exists before the kubelet starts: the kubelet refuses a loopback
  # node IP, and the node IP is this bridge address.
  ip link add "$bridge" type bridge
  ip addr add "$node_ip/16" dev "$bridge"
  ip link set "$bridge" up
  local ipt r
  for ipt in iptables ip6tables; do
    for r in "${forward_rules[@]}"; do
      # shellcheck disable=SC2086
      "$ipt" -w -t mangle -I FORWARD 1 $r -m comment --comment "$forward_comment" -j DROP
    done
  done
}

node_network_down() {
  local ipt r
  for ipt in iptables ip6tables; do
    for r in "${forward_rules[@]}"; do
      # shellcheck disable=SC2086
      while "$ipt" -w -t mangle -D FORWARD $r -m comment --comment "$forward_comment" -j DROP 2>/dev/null; do :; done
    done
  done
  if ip link show "$bridge" >/dev/null 2>&1; then
    # Pod veths go with their network namespaces (node_unmount); any left
    # attached to the bridge go here.
    local veth
    for veth in $(ip -o link show master "$bridge" 2>/dev/null | awk -F': ' '{ print $2 }' | cut -d@ -f1); do
      ip link del "$veth" 2>/dev/null || true
    done
    ip link del "$bridge"
  fi
}

# Removes every KUBE-* chain (kube-proxy's after `kube-proxy --cleanup`, and
# the kubelet's) and the rules in the built-in chains that jump to them.
node_iptables_cleanup() {
  local ipt table line chains chain
  for ipt in iptables ip6tables; do
    for table in filter nat mangle raw; do
      # Rules in built-in chains that reference a KUBE- chain.
      "$ipt-save" -t "$table" 2>/dev/null | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*KUBE-' |
        while read -r line; do
          # shellcheck disable=SC2086
          eval "$ipt -w -t $table -D ${line#-A }" 2>/dev/null || true
        done || true
      chains=$("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p')
      for chain in $chains; do "$ipt" -w -t "$table" -F "$chain" 2>/dev/null || true; done
      for chain in $chains; do "$ipt" -w -t "$table" -X "$chain" 2>/dev/null || true; done
    done
  done
}

ctr_() { ctr --address "$ctr_sock" --namespace k8s.io "$@"; }

node_images_import() {
  local f
  shopt -s nullglob
  for f in "$images_dir"/*.tar; do
    ctr_ images import "$f" >/dev/null 2>"$state/ctr-import.log" || { cat "$state/ctr-import.log" >&2; die "importing $f into containerd failed"; }
    log "imported $f"
  done
  shopt -u nullglob
}

# Every container of our containerd: tasks killed and deleted, containers,
# images and snapshots removed, so no shim or mount outlives `down`.
node_containers_purge() {
  [ -S "$ctr_sock" ] || return 0
  ctr_ version >/dev/null 2>&1 || return 0
  local id
  # Remembered for the CNI result files named after them (node_restore_host).
  ctr_ containers ls -q 2>/dev/null >>"$state/sandbox-ids" || true
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
  for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
  ctr_ images ls -q 2>/dev/null | xargs -r ctr --address "$ctr_sock" --namespace k8s.io images rm >/dev/null 2>&1 || true
  for id in $(ctr_ snapshots ls 2>/dev/null | awk 'NR > 1 { print $1 }'); do ctr_ snapshots rm "$id" >/dev/null 2>&1 || true; done
}

# Kills by pid what could outlive containerd: shims started for our socket, and
# any process left in the kubelet's cgroups.
node_kill_leftovers() {
  local p pids=() f
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF -- "-address $ctr_sock " && pids+=("${p#/proc/}")
  done
  for f in /sys/fs/cgroup/*/kubepods; do
    [ -d "$f" ] || continue
    while read -r p; do [ -n "$p" ] && pids+=("$p"); done < <(find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null)
  done
  [ "${#pids[@]}" -gt 0 ] || return 0
  log "killing leftover pids: ${pids[*]}"
  kill -KILL "${pids[@]}" 2>/dev/null || true
  sleep 0.3
}

node_unmount() {
  local dir m
  for dir in "$node_run" "$node_root"; do
    [ -e "$dir" ] || continue
    # Deepest first; the kubelet bind-mounts its root dir onto itself.
    findmnt -rn -o TARGET | awk -v d="$dir" '$0 == d || index($0, d "/") == 1' | sort -r |
      while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"; done
    rm -rf "$dir"
  done
}

node_cgroups_cleanup() {
  local f
  for f in /sys/fs/cgroup/*/kubepods; do
    [ -d "$f" ] || continue
    find "$f" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ ! -d "$f" ] || log "could not remove cgroup $f"
  done
}

# stop_relay: the relay forks one child per connection; those go first.
stop_relay() {
  local pid
  pid=$(pid_of apiserver-relay) || return 0
  pkill -KILL -P "$pid" 2>/dev/null || true
  stop apiserver-relay
}

# Undoes everything node mode did to the host; each part is a no-op when
# there is nothing to undo, so this also cleans up after a failed `up`.
node_down() {
  local t0=$EPOCHREALTIME
  # The controllers would recreate pods; the kubelet would restart containers.
  stop kube-controller-manager
  stop kube-scheduler
  stop kubelet
  stop coredns
  node_containers_purge
  stop containerd
  node_kill_leftovers
  stop kube-proxy
  if [ -x "${k8s_bin_dir:-}/kube-proxy" ]; then
    "$k8s_bin_dir/kube-proxy" --cleanup --v=0 >"$state/kube-proxy-cleanup.log" 2>&1 || log "kube-proxy --cleanup failed (log: $state/kube-proxy-cleanup.log)"
  fi
  node_iptables_cleanup
  stop_relay
  node_unmount
  node_cgroups_cleanup
  node_network_down
  node_restore_host
  log "node torn down in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1fs", b - a }')"
}

# Ready, and untainted: the controller-manager's node-lifecycle controller
# lifts the not-ready taint the kubelet registers with (a few seconds in).
node_ready() {
  [ "$(kc get node "$node_name" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}/{.spec.taints}' 2>/dev/null)" = True/ ]
}
default_sa_exists() { kc -n default get serviceaccount default >/dev/null 2>&1; }
root_ca_published() { kc -n default get configmap kube-root-ca.crt >/dev/null 2>&1; }
containerd_up() { ctr_ version >/dev/null 2>&1; }
coredns_ready() { curl -fsS --max-time 2 "http://127.0.0.1:$coredns_ready_port/ready" >/dev/null 2>&1; }
probe_ready() {
  [ "$(kc -n default get pod tollgate-e2e-probe -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# Starts the node after the API server is ready; containerd runs already.
node_up() {
  local bin=$k8s_bin_dir
  write_kubeconfig "$state/kubelet.kubeconfig" "$server" kubelet
  write_kubeconfig "$state/kube-controller-manager.kubeconfig" "$server" kube-controller-manager
  write_kubeconfig "$state/kube-scheduler.kubeconfig" "$server" kube-scheduler
  write_kubeconfig "$state/kube-proxy.kubeconfig" "$server" kube-proxy

  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$state/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$(free_port)" \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" \
    --root-ca-file="$pki/ca.crt" \
    --service-cluster-ip-range="$service_cidr" \
    --cluster-cidr="$pod_cidr" \
    --profiling=false --v=1
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig="$state/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$(free_port)" \
    --leader-elect=false --profiling=false --v=1
  # conntrack flags at 0 and NodePorts only on the node IP: kube-proxy leaves
  # the host's conntrack sysctls and route_localnet alone.
  start kube-proxy "$bin/kube-proxy" \
    --kubeconfig="$state/kube-proxy.kubeconfig" \
    --proxy-mode=iptables \
    --cluster-cidr="$pod_cidr" \
    --hostname-override="$node_name" \
    --bind-address="$node_ip" \
    --nodeport-addresses="$node_ip/32" \
    --healthz-bind-address="127.0.0.1:$(free_port)" \
    --metrics-bind-address="127.0.0.1:$(free_port)" \
    --conntrack-max-per-core=0 \
    --conntrack-tcp-timeout-established=0 \
    --conntrack-tcp-timeout-close-wait=0 \
    --v=1
  kubelet_port=$(free_port)
  kubelet_healthz_port=$(free_port)
  render kubelet.yaml "$state/kubelet.yaml"
  start kubelet "$bin/kubelet" \
    --config="$state/kubelet.yaml" \
    --kubeconfig="$state/kubelet.kubeconfig" \
    --root-dir="$node_root/kubelet" \
    --cert-dir="$node_root/kubelet/pki" \
    --hostname-override="$node_name" \
    --node-ip="$node_ip" \
    --v=1
  step "controllers, scheduler, proxy, kubelet started"

  # CoreDNS runs on the host, not as a pod: no CoreDNS image can be pulled and
  # building one is a second image build; on the host it starts in about a
  # second without waiting for the scheduler, uses the admin kubeconfig
  # directly and stays out of the tests' pod lists. The kube-dns Service has
  # no selector and an EndpointSlice pointing at the bridge address, where
  # CoreDNS listens.
  kc apply -f "$node_templates/kube-dns.yaml" >/dev/null
  coredns_ready_port=$(free_port)
  render Corefile "$state/Corefile"
  start coredns "$coredns_dir/coredns" -conf "$state/Corefile"
  wait_until "$ready_timeout" "CoreDNS /ready" coredns_ready
  step "coredns ready"

  wait_until "$ready_timeout" "node $node_name Ready and untainted" node_ready
  step "node Ready and untainted"
  # The probe does not wait for the controller-manager's ServiceAccount
  # controller (it takes a few seconds to start): its ServiceAccount is made here.
  kc -n default create serviceaccount default >/dev/null 2>&1 || default_sa_exists
  kc apply -f "$node_templates/probe-pod.yaml" >/dev/null
  wait_until "$ready_timeout" "probe pod Running and Ready" probe_ready
  step "probe pod Running"
  local out
  # Plain HTTP to the HTTPS port: the API server's "400 Bad Request" proves the
  # Service routes to it without needing TLS in the image's wget. (Debian's
  # static busybox wget segfaults with -T and with -O-.)
  if ! out=$(kc -n default exec tollgate-e2e-probe -- sh -c \
      "nslookup kubernetes.default.svc.cluster.local && { wget -O /dev/null http://$apiserver_service_ip:443/ 2>&1; true; }" 2>&1); then
    echo "$out" >&2
    kc -n default describe pod tollgate-e2e-probe >&2 || true
    tail_logs
    die "the probe pod could not resolve kubernetes.default.svc.cluster.local or reach https://$apiserver_service_ip"
  fi
  if ! grep -qE "^Address:[[:space:]]*${apiserver_service_ip//./\\.}\$" <<<"$out" || [[ $out != *"400 Bad Request"* ]]; then
    echo "$out" >&2
    die "the probe pod could not resolve kubernetes.default.svc.cluster.local to $apiserver_service_ip or reach $apiserver_service_ip:443"
  fi
  kc -n default delete pod tollgate-e2e-probe --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  step "probe pod resolved kubernetes.default and reached $apiserver_service_ip:443"
  # Pods mounting ServiceAccount tokens need this ConfigMap (the controller-manager's
  # root-ca-cert-publisher); waiting for it proves the controller-manager works.
  wait_until "$ready_timeout" "ConfigMap default/kube-root-ca.crt (controller-manager)" root_ca_published
  step "controller-manager published kube-root-ca.crt"
}

# ---------------------------------------------------------------------------

# On a failed `up`, stop whatever it started and undo the node's host changes;
# the logs stay for a look.
up_failed() {
  local rc=$? i
  [ "$rc" -ne 0 ] || return 0
  log "up failed; stopping what it started (logs kept in $state)"
  rm -f "$kubeconfig"
  if [ "$node_mode" = 1 ]; then node_down; fi
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do
    stop "${components[$i]}"
  done
}

cmd_up() {
  if all_running; then
    log "already running ($(<"$state/server"))"
    return 0
  fi
  if [ -d "$state" ] || [ -e "$node_run" ] || [ -e "$node_root" ]; then
    log "found stale state; cleaning it up first"
    cmd_down
  fi
  command -v openssl >/dev/null || die "openssl is required"
  command -v curl >/dev/null || die "curl is required"
  [ "$node_mode" = 0 ] || node_preflight

  local t0=$SECONDS dirs k8s_dir etcd_dir build_args=()
  [ "$node_mode" = 0 ] || build_args=(--with-node)
  dirs=$(bash "$here/build-control-plane.sh" "${build_args[@]}") || die "building the control plane failed (see above)"
  k8s_dir=$(sed -n 1p <<<"$dirs")
  etcd_dir=$(sed -n 2p <<<"$dirs")
  coredns_dir=$(sed -n 3p <<<"$dirs")
  k8s_bin_dir=$k8s_dir
  local apiserver_bin=$k8s_dir/kube-apiserver etcd_bin=$etcd_dir/etcd
  kubectl_bin=$k8s_dir/kubectl
  local need=("$apiserver_bin" "$kubectl_bin" "$etcd_bin")
  [ "$node_mode" = 0 ] || need+=("$k8s_dir/kubelet" "$k8s_dir/kube-proxy" "$k8s_dir/kube-scheduler"
    "$k8s_dir/kube-controller-manager" "$coredns_dir/coredns")
  for b in "${need[@]}"; do
    [ -x "$b" ] || die "missing binary after build: $b"
  done
  log "binaries ready in $((SECONDS - t0))s"
  step "binaries"

  mkdir -p "$state"
  echo "$k8s_dir" >"$state/k8s-bin-dir"
  trap up_failed EXIT
  local advertise=127.0.0.1
  if [ "$node_mode" = 1 ]; then
    touch "$state/node"
    advertise=$node_ip
    node_record_host
    mkdir -p "$node_root/cni/net.d" "$node_root/cni/networks" "$node_root/pod-logs" "$node_run"
    chmod 700 "$node_root" "$node_run"
    render containerd.toml "$node_root/containerd.toml"
    render cni.conflist "$node_root/cni/net.d/10-tollgate-e2e.conflist"
    # Pods whose dnsPolicy is Default (and the kubelet) see this, never the host's resolver.
    printf 'nameserver %s\n' "$cluster_dns" >"$node_root/resolv.conf"
    node_network_up
    # containerd first: it starts while etcd and the API server do.
    start containerd "$(command -v containerd)" --config "$node_root/containerd.toml"
  fi
  gen_pki
  step "pki"

  etcd_client_port=$(free_port)
  local etcd_peer_port
  etcd_peer_port=$(free_port)
  apiserver_port=$(free_port)
  server=https://127.0.0.1:$apiserver_port

  start etcd "$etcd_bin" \
    --name=tollgate-e2e \
    --data-dir="$state/etcd" \
    --unsafe-no-fsync \
    --listen-client-urls="http://127.0.0.1:$etcd_client_port" \
    --advertise-client-urls="http://127.0.0.1:$etcd_client_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster="tollgate-e2e=http://127.0.0.1:$etcd_peer_port" \
    --log-level=warn
  wait_until 30 "etcd /health on 127.0.0.1:$etcd_client_port" etcd_healthy
  step "etcd healthy"

  # Without a node no controller-manager runs: namespaces never finish
  # terminating and no ServiceAccount is created for you (the test helpers
  # create `default`).
  start kube-apiserver "$apiserver_bin" \
    --etcd-servers="http://127.0.0.1:$etcd_client_port" \
    --advertise-address="$advertise" \
    --bind-address=127.0.0.1 \
    --secure-port="$apiserver_port" \
    --service-cluster-ip-range="$service_cidr" \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NamespaceLifecycle,ServiceAccount,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,ValidatingAdmissionWebhook \
    --allow-privileged=true \
    --client-ca-file="$pki/ca.crt" \
    --tls-cert-file="$pki/apiserver.crt" \
    --tls-private-key-file="$pki/apiserver.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$pki/front-proxy-client.crt" \
    --proxy-client-key-file="$pki/front-proxy-client.key" \
    --enable-aggregator-routing=true \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --profiling=false \
    --v=1
  echo "$server" >"$state/server"
  echo "$kubectl_bin" >"$state/kubectl"
  write_kubeconfig "$kubeconfig" "$server" admin

  if [ "$node_mode" = 1 ]; then
    # The API server listens on loopback only; pods reach it at the address
    # it advertises (the `kubernetes` Service's endpoint) through this relay.
    start apiserver-relay "$(command -v socat)" \
      "TCP-LISTEN:$apiserver_port,bind=$node_ip,fork,reuseaddr,backlog=128" "TCP:127.0.0.1:$apiserver_port"
    wait_until 30 "containerd on $ctr_sock" containerd_up
    node_images_import
    step "containerd up, images imported"
  fi

  wait_until "$ready_timeout" "kube-apiserver /readyz on $server" apiserver_ready
  step "apiserver ready"
  if [ "$node_mode" = 1 ]; then node_up; fi
  check_loopback_only
  trap - EXIT
  local node_note=
  [ "$node_mode" = 0 ] || node_note=", node $node_name at $node_ip"
  log "up in $((SECONDS - t0))s: $server (kubeconfig: $kubeconfig)$node_note"
}

# stop NAME: SIGTERM the recorded pid, then SIGKILL after a bounded wait.
stop() {
  local name=$1 pid deadline
  pid=$(pid_of "$name") || return 0
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + stop_timeout))
  # An exited process stays a zombie until init reaps it (which can take
  # seconds here): that counts as stopped.
  while kill -0 "$pid" 2>/dev/null && [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name (pid $pid) ignored SIGTERM for ${stop_timeout}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  log "stopped $name (pid $pid)"
}

# Stops the components in reverse start order: the API server's graceful
# shutdown hangs if etcd goes away underneath it. In node mode the node goes
# first, while the API server still answers.
cmd_down() {
  local i t0=$SECONDS
  if [ -f "$state/node" ] || [ -e "$node_run" ] || [ -e "$node_root" ]; then
    k8s_bin_dir=$(cat "$state/k8s-bin-dir" 2>/dev/null || true)
    node_down
  fi
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do
    stop "${components[$i]}"
  done
  rm -rf "$state" "$kubeconfig"
  log "down in $((SECONDS - t0))s"
}

cmd_status() {
  local c pid rc=0
  for c in "${components[@]}"; do
    if pid=$(pid_of "$c"); then
      echo "$c: running (pid $pid)"
    else
      echo "$c: not running"
      rc=1
    fi
  done
  if [ "$rc" -eq 0 ]; then
    echo "server: $(<"$state/server")"
    echo "kubeconfig: $kubeconfig"
  fi
  return "$rc"
}

cmd_env() {
  all_running || die "the cluster is not running; start it with: $here/cluster.sh up"
  printf 'export KUBECONFIG=%q\n' "$kubeconfig"
  printf 'export TOLLGATE_KUBECTL=%q\n' "$(<"$state/kubectl")"
  printf 'export TOLLGATE_E2E_APISERVER=%q\n' "$(<"$state/server")"
  if [ "$node_mode" = 1 ]; then
    printf 'export TOLLGATE_E2E_NODE=1\n'
    printf 'export TOLLGATE_E2E_NODE_NAME=%q\n' "$node_name"
    printf 'export TOLLGATE_E2E_NODE_IP=%q\n' "$node_ip"
    printf 'export TOLLGATE_E2E_POD_CIDR=%q\n' "$pod_cidr"
    printf 'export TOLLGATE_E2E_SERVICE_CIDR=%q\n' "$service_cidr"
    printf 'export TOLLGATE_E2E_CLUSTER_DNS=%q\n' "$cluster_dns"
    printf 'export TOLLGATE_E2E_CONTAINERD_SOCK=%q\n' "$ctr_sock"
    printf 'export TOLLGATE_CTR=%q\n' "ctr --address $ctr_sock --namespace k8s.io"
  fi
}

case "${1:-}" in
  up)
    shift
    [ "${TOLLGATE_E2E_WITH_NODE:-0}" != 1 ] || node_mode=1
    for arg in "$@"; do
      case "$arg" in
        --with-node) node_mode=1 ;;
        *) usage ;;
      esac
    done
    [ "$node_mode" = 0 ] || components+=("${node_components[@]}")
    cmd_up
    ;;
  down | status | env)
    [ "$#" -eq 1 ] || usage
    if [ -f "$state/node" ]; then
      node_mode=1
      components+=("${node_components[@]}")
    fi
    "cmd_$1"
    ;;
  *) usage ;;
esac
