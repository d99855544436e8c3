#!/usr/bin/env bash
# A throwaway Kubernetes control plane on loopback for the e2e suites:
# etcd plus kube-apiserver, no controller-manager, scheduler or kubelet.
#
#   e2e/cluster.sh up      build or reuse the binaries, generate PKI, start, wait for /readyz
#   e2e/cluster.sh down    stop exactly the processes `up` started (pid files) and remove the state
#   e2e/cluster.sh status  report whether they run; exit 0 if all do, 1 otherwise
#   e2e/cluster.sh env     print `export ...` lines for: eval "$(e2e/cluster.sh env)"
#
# State lives in e2e/.state/cluster (git-ignored); the kubeconfig is e2e/.state/kubeconfig.
# Everything listens on 127.0.0.1 only, on ports picked free at start.
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

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  echo "usage: $(basename "$0") up|down|status|env" >&2
  exit 2
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

# A port is free when nothing accepts a connection on it. Ports come from
# below the kernel's ephemeral range (32768+) so outgoing connections can't
# be holding them.
declare -A taken_ports=()
free_port() {
  local port tries=0
  while [ "$tries" -lt 200 ]; do
    tries=$((tries + 1))
    port=$((20000 + RANDOM % 12000))
    [ -z "${taken_ports[$port]:-}" ] || continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      taken_ports[$port]=1
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
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout ca.key -out ca.crt -days 30 -subj "/CN=tollgate-e2e-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

    # sign NAME SUBJECT EXTENSIONS: a P-256 key and a certificate from the CA.
    sign() {
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -days 30 -sha256 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    sign apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1"
    sign admin "/O=system:masters/CN=tollgate-e2e-admin" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

    # ServiceAccount token signing pair (RS256, the API server's default).
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
  ) || die "generating certificates with openssl failed"
}

b64() { base64 -w0 <"$1"; }

write_kubeconfig() {
  local server=$1 tmp=$kubeconfig.tmp
  (
    umask 077
    cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tollgate-e2e
  cluster:
    server: $server
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: tollgate-e2e-admin
  user:
    client-certificate-data: $(b64 "$pki/admin.crt")
    client-key-data: $(b64 "$pki/admin.key")
contexts:
- name: tollgate-e2e
  context:
    cluster: tollgate-e2e
    user: tollgate-e2e-admin
current-context: tollgate-e2e
EOF
  )
  mv "$tmp" "$kubeconfig"
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

# Fails if any process we started listens on anything but loopback.
check_loopback_only() {
  command -v ss >/dev/null || { log "ss not found; skipping the loopback-only listener check"; return 0; }
  local c pid bad
  for c in "${components[@]}"; do
    pid=$(pid_of "$c") || continue
    bad=$(ss -Hltnup 2>/dev/null | grep -F "pid=$pid," | awk '{print $5}' | grep -v -E '^(127\.0\.0\.1|\[::1\]):' || true)
    [ -z "$bad" ] || die "$c listens beyond loopback: $bad"
  done
}

# On a failed `up`, stop whatever it started; the logs stay for a look.
up_failed() {
  local rc=$? i
  [ "$rc" -ne 0 ] || return 0
  log "up failed; stopping what it started (logs kept in $state)"
  rm -f "$kubeconfig"
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do
    stop "${components[$i]}"
  done
}

cmd_up() {
  if all_running; then
    log "already running ($(<"$state/server"))"
    return 0
  fi
  if [ -d "$state" ]; then
    log "found stale state; cleaning it up first"
    cmd_down
  fi
  command -v openssl >/dev/null || die "openssl is required"
  command -v curl >/dev/null || die "curl is required"

  local t0=$SECONDS dirs k8s_dir etcd_dir
  dirs=$(bash "$here/build-control-plane.sh") || die "building the control plane failed (see above)"
  k8s_dir=$(sed -n 1p <<<"$dirs")
  etcd_dir=$(sed -n 2p <<<"$dirs")
  local apiserver_bin=$k8s_dir/kube-apiserver kubectl_bin=$k8s_dir/kubectl etcd_bin=$etcd_dir/etcd
  for b in "$apiserver_bin" "$kubectl_bin" "$etcd_bin"; do
    [ -x "$b" ] || die "missing binary after build: $b"
  done
  log "binaries ready in $((SECONDS - t0))s"

  mkdir -p "$state"
  trap up_failed EXIT
  gen_pki

  etcd_client_port=$(free_port)
  local etcd_peer_port
  etcd_peer_port=$(free_port)
  apiserver_port=$(free_port)
  local server=https://127.0.0.1:$apiserver_port

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

  # No controller-manager runs: namespaces never finish terminating and no
  # ServiceAccount is created for you (the test helpers create `default`).
  start kube-apiserver "$apiserver_bin" \
    --etcd-servers="http://127.0.0.1:$etcd_client_port" \
    --advertise-address=127.0.0.1 \
    --bind-address=127.0.0.1 \
    --secure-port="$apiserver_port" \
    --service-cluster-ip-range=10.96.0.0/16 \
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
    --profiling=false \
    --v=1
  echo "$server" >"$state/server"
  echo "$kubectl_bin" >"$state/kubectl"
  write_kubeconfig "$server"

  wait_until "$ready_timeout" "kube-apiserver /readyz on $server" apiserver_ready
  check_loopback_only
  trap - EXIT
  log "up in $((SECONDS - t0))s: $server (kubeconfig: $kubeconfig)"
}

# stop NAME: SIGTERM the recorded pid, then SIGKILL after a bounded wait.
stop() {
  local name=$1 pid deadline
  pid=$(pid_of "$name") || return 0
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + stop_timeout))
  while kill -0 "$pid" 2>/dev/null; do
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
# shutdown hangs if etcd goes away underneath it.
cmd_down() {
  local i
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do
    stop "${components[$i]}"
  done
  rm -rf "$state" "$kubeconfig"
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
}

[ "$#" -eq 1 ] || usage
case "$1" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) usage ;;
esac
