#!/usr/bin/env bash
# The e2e stage: build the suites, start the control plane and PostgreSQL,
# run `cargo test -p tollgate-e2e`, then the node suite on a real single-node
# cluster (kubelet, containerd, CNI) with the locally built images, and always
# tear everything down.
#
#   e2e/run.sh [CARGO_TEST_ARGS...] [-- HARNESS_ARGS...]
#
# Arguments go to `cargo test` as they would on its own command line, so
# `e2e/run.sh --test crds -- e2e_printer` runs
# `cargo test -p tollgate-e2e --no-fail-fast --test crds -- --test-threads=2 e2e_printer`.
# TOLLGATE_E2E_KEEP=1 leaves the cluster and PostgreSQL running afterwards.
# A control plane that cannot be started is a failure, never a skip.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

cargo_args=()
harness_args=()
while [ "$#" -gt 0 ]; do
  if [ "$1" = "--" ]; then
    shift
    harness_args=("$@")
    break
  fi
  cargo_args+=("$1")
  shift
done

log() { echo "run.sh: $*" >&2; }

timings=()
stage_start=0
stage_name=
begin() {
  stage_name=$1
  stage_start=$SECONDS
  log "== $stage_name"
}
end() {
  timings+=("$(printf '%-16s %4ss' "$stage_name" "$((SECONDS - stage_start))")")
  stage_name=
}

# What went wrong while starting a cluster, repeated after the timings: the
# log above is long and a CI summary may show only its end.
failure_notes=()

# cluster.sh keeps its logs and the cause (up-error) in its state dir after a
# failed `up`; a copy goes under .state/failed-*, which `down` leaves alone.
keep_up_failure() {
  local what=$1 dir=$here/.state/failed-$2 cause
  rm -rf "$dir"
  cp -r "$here/.state/cluster" "$dir" 2>/dev/null || true
  cause=$(cat "$dir/up-error" 2>/dev/null || echo "(no cause recorded; see the log above)")
  failure_notes+=("$what failed (logs: $dir):" "$cause")
}

# A real node is many processes started in a few seconds; one failed start
# (the cause is kept and printed at the end) gets a second, clean attempt.
# Two failures fail the run.
node_up_with_one_retry() {
  local attempt
  for attempt in 1 2; do
    if "$here/cluster.sh" up --with-node; then
      [ "$attempt" = 1 ] || failure_notes+=("node-up passed on attempt $attempt")
      return 0
    fi
    keep_up_failure "node-up attempt $attempt" "node-up-$attempt"
    "$here/cluster.sh" down || return 1
    [ "$attempt" = 2 ] || log "node-up attempt $attempt failed; tearing down and trying once more"
  done
  return 1
}

teardown() {
  local rc=$?
  trap - EXIT INT TERM
  [ -z "$stage_name" ] || end
  if [ "${TOLLGATE_E2E_KEEP:-}" = 1 ]; then
    log "TOLLGATE_E2E_KEEP=1: leaving the cluster and PostgreSQL running"
  else
    begin teardown
    "$here/cluster.sh" down || rc=1
    "$here/postgres.sh" down || rc=1
    end
  fi
  log "timings:"
  printf '  %s\n' "${timings[@]}" >&2
  if [ "${#failure_notes[@]}" -gt 0 ]; then
    log "cluster start-up problems:"
    printf '  %s\n' "${failure_notes[@]}" >&2
  fi
  if [ "$rc" -eq 0 ]; then log "e2e passed"; else log "e2e FAILED (exit $rc)"; fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cd "$root"
# The suites' error messages say what failed; anyhow's backtraces only bury
# them (panics still honour RUST_BACKTRACE).
export RUST_LIB_BACKTRACE="${RUST_LIB_BACKTRACE:-0}"

# The node stage (tests/node.rs: a real kubelet, containerd and CNI) runs
# after the API-server-only suites, on a cluster of its own. It needs root;
# TOLLGATE_E2E_NODE=0 leaves it out (never under CI, where it must run).
with_node=1
if [ "${TOLLGATE_E2E_NODE:-1}" = 0 ]; then
  [ -z "${CI:-}" ] || { log "TOLLGATE_E2E_NODE=0 is not allowed under CI"; exit 1; }
  with_node=0
fi
# `--test node` runs the node stage alone; any other selection of suites
# (e.g. --test crds) runs without it.
node_only=0
prev=
for a in "${cargo_args[@]}"; do
  case "$prev:$a" in
    --test:node | *:--test=node) node_only=1 ;;
    --test:* | *:--test=*) with_node=0 ;;
  esac
  prev=$a
done
[ "$node_only" = 0 ] || with_node=1
# The node suite's one test, skipped by its whole name in the first stage (a
# shorter filter such as node_ could skip other tests too).
node_test=node_user_stories_install_govern_audit_and_survive_faults

# Compile first so that no cluster sits idle during a build.
begin build
cargo test -p tollgate-e2e --no-run "${cargo_args[@]}"
# The operator suites start the real binary (e2e/src/operator.rs); the node
# suite runs the kubectl plugin and the images of all three.
cargo build -p tollgate-operator --bin tollgate-operator -p tollgate-gateway --bin tollgate-gateway \
  -p tollgate-recorder --bin tollgate-recorder -p tollgate-cli --bin kubectl-tollgate
# The chart suite (tests/helm.rs) runs the helm built from source.
TOLLGATE_HELM=$("$here/build-helm.sh")
export TOLLGATE_HELM
end

if [ "$with_node" = 1 ]; then
  begin images
  # Debug binaries, stripped: the same Dockerfile recipe, without a second
  # (release) build of the workspace inside the CI budget.
  TOLLGATE_BIN_DIR="${CARGO_TARGET_DIR:-$root/target}/debug" PROFILE=debug E2E_IMAGES=1 \
    "$root/images/build.sh"
  python3 -m pytest -q -p no:cacheprovider "$root/images/test_images.py"
  end
fi

begin cluster-up
if ! "$here/cluster.sh" up; then
  keep_up_failure "cluster-up" cluster-up
  log "the control plane could not be started${CI:+ (CI=$CI)}; e2e cannot run"
  exit 1
fi
eval "$("$here/cluster.sh" env)"
end

begin postgres-up
"$here/postgres.sh" up
eval "$("$here/postgres.sh" env)"
end

# The suites themselves fail when KUBECONFIG is missing; this check only
# gives a clearer message earlier.
if [ -z "${KUBECONFIG:-}" ] || [ ! -f "$KUBECONFIG" ]; then
  log "no kubeconfig after cluster.sh up"
  exit 1
fi

# --no-fail-fast: one failing suite must not hide the results of the others,
# and a failure here does not skip the node stage either (reported at the end).
suites_rc=0
if [ "$node_only" = 0 ]; then
  begin tests
  cargo test -p tollgate-e2e --no-fail-fast "${cargo_args[@]}" \
    -- --test-threads=2 --skip "$node_test" "${harness_args[@]}" || suites_rc=$?
  end
fi

if [ "$with_node" = 1 ]; then
  begin node-up
  "$here/cluster.sh" down
  host_before=$(mktemp)
  host_after=$(mktemp)
  "$here/host-state.sh" snapshot "$host_before"
  if ! node_up_with_one_retry; then
    log "the node could not be started${CI:+ (CI=$CI)}; the node suite cannot run"
    exit 1
  fi
  eval "$("$here/cluster.sh" env)"
  end

  begin node-tests
  cargo test -p tollgate-e2e --no-fail-fast --test node -- --test-threads=1 --nocapture
  end

  begin node-down
  "$here/cluster.sh" down
  "$here/host-state.sh" snapshot "$host_after"
  if "$here/host-state.sh" compare "$host_before" "$host_after"; then
    echo "host restored: 1 passed, 0 failed"
  else
    log "cluster.sh down left the host changed (diff above)"
    echo "host restored: 0 passed, 1 failed"
    exit 1
  fi
  rm -f "$host_before" "$host_after"
  end
fi
if [ "$suites_rc" -ne 0 ]; then
  log "the API-server suites failed (exit $suites_rc); see above"
  exit "$suites_rc"
fi
