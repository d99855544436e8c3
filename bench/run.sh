#!/usr/bin/env bash
# Benchmarks, all on loopback, every result a ratio to baselines measured in
# the same run: direct to the mock upstream, and nginx as one plain proxy hop.
# Writes bench/results/latest.json and docs/benchmarks.md. Never part of CI.
#
#   bench/run.sh            # full run (about 15 minutes on 2 cores)
#   BENCH_QUICK=1 bench/run.sh   # shorter load phases
#   BENCH_CALLGRIND_ONLY=1 bench/run.sh   # the gateway's instructions per
#                                         # request only, printed (minutes)
#   BENCH_CPU_ONLY=1 bench/run.sh   # CPU time, system calls and context switches per
#                                   # request, gateway and nginx (a minute)
#   BENCH_SSE_ONLY=1 bench/run.sh   # streaming's added time to first byte and
#                                   # gap between events, nginx and gateway, and
#                                   # the same request unstreamed, warm and idle
#   BENCH_MAX_RATE_ONLY=1 bench/run.sh   # the highest rate within 5 ms added
#                                        # p99, gateway and nginx (minutes)
#   BENCH_GATEWAY_THREADS=N ...   # the gateway with N request threads (default 1)
#   BENCH_HOLD=1 bench/run.sh   # starts the mock, nginx and the gateway, prints
#                               # their URLs and waits (probing by hand)
#   BENCH_PROFILE_ONLY=1 bench/run.sh   # the gateway's native profile at 1k rps
#                                       # (perf on the CPU clock), printed; keeps
#                                       # perf.data in the work directory
#   BENCH_GATEWAY_BIN=<binary> ...   # measures that gateway binary instead
#                                    # (an A/B against an earlier build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${TOLLGATE_CACHE:-$HOME/.cache/tollgate}/tools
export PATH="$tools/bin:$PATH"

command -v nginx >/dev/null || { echo "bench: installing nginx-light" >&2; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null; }
command -v oha >/dev/null || { echo "bench: installing oha (constant-rate load generator) into $tools" >&2; cargo install --locked --root "$tools" oha; }
python3 -c 'import litellm' 2>/dev/null || { echo "bench: installing litellm[proxy] (peer comparison)" >&2; pip install -q 'litellm[proxy]' || echo "bench: litellm unavailable; its rows will be empty" >&2; }

cd "$root"
for tool in perf:linux-perf valgrind:valgrind; do
  command -v "${tool%%:*}" >/dev/null && continue
  echo "bench: installing ${tool#*:}" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${tool#*:}" >/dev/null; } \
    || echo "bench: ${tool#*:} unavailable; its section will say so" >&2
done
cargo build --release -q -p tollgate-cli -p tollgate-bench
cargo build --release -q -p tollgate-operator --example admission_bench
cargo build --release -q -p tollgate-gateway --example decision_bench
# The gateway as it ships: built on its own (no features another package of the
# workspace would unify into it), and last, so target/release holds this build.
cargo build --release -q -p tollgate-gateway
exec python3 "$root/bench/run.py" "$@"
