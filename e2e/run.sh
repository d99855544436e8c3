#!/usr/bin/env bash
# The e2e stage: build the suites, start the control plane and PostgreSQL,
# run `cargo test -p tollgate-e2e`, and always tear both down.
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

# Compile first so that no cluster sits idle during a build.
begin build
cargo test -p tollgate-e2e --no-run "${cargo_args[@]}"
# The operator suites start the real binary (e2e/src/operator.rs).
cargo build -p tollgate-operator --bin tollgate-operator -p tollgate-gateway --bin tollgate-gateway
# The chart suite (tests/helm.rs) runs the helm built from source.
TOLLGATE_HELM=$("$here/build-helm.sh")
export TOLLGATE_HELM
end

begin cluster-up
if ! "$here/cluster.sh" up; then
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

begin tests
# --no-fail-fast: one failing suite must not hide the results of the others.
cargo test -p tollgate-e2e --no-fail-fast "${cargo_args[@]}" -- --test-threads=2 "${harness_args[@]}"
end
