#!/usr/bin/env bash
# Benchmarks, all on loopback, every result a ratio to baselines measured in
# the same run: direct to the mock upstream, and nginx as one plain proxy hop.
# Writes bench/results/latest.json and docs/benchmarks.md. Never part of CI.
#
#   bench/run.sh            # full run (about 5 minutes on 2 cores)
#   BENCH_QUICK=1 bench/run.sh   # shorter load phases
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/tools
export PATH="$tools/bin:$PATH"

command -v nginx >/dev/null || { echo "bench: installing nginx-light" >&2; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null; }
command -v oha >/dev/null || { echo "bench: installing oha (constant-rate load generator) into $tools" >&2; cargo install --locked --root "$tools" oha; }
python3 -c 'import litellm' 2>/dev/null || { echo "bench: installing litellm[proxy] (peer comparison)" >&2; pip install -q 'litellm[proxy]' || echo "bench: litellm unavailable; its rows will be empty" >&2; }

cd "$root"
cargo build --release -q -p tollgate-gateway -p tollgate-cli -p tollgate-bench
cargo build --release -q -p tollgate-operator --example admission_bench
cargo build --release -q -p tollgate-gateway --example decision_bench
exec python3 "$root/bench/run.py" "$@"
