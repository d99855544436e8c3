#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ and runs each for a fixed time.
#
#   scripts/fuzz.sh [--seconds N] [--seed N] [--fresh-corpus] [TARGET...]
#                                  (default: 60 s, a random seed, every target)
#
# For each target: every file in fuzz/regressions/TARGET (inputs that once
# crashed it) runs first and must pass; then libFuzzer runs for N seconds from
# the seeds in fuzz/seeds/TARGET plus the corpus kept in
# ${TOLLGATE_FUZZ_CORPUS:-~/.cache/tollgate/fuzz-corpus}/TARGET, which grows
# across runs (--fresh-corpus: an empty one, thrown away after, so a run with
# --seed is repeatable). A crash leaves its input in fuzz/artifacts/TARGET and
# fails the run; copy it into fuzz/regressions/TARGET with the fix.
#
# No nightly toolchain: the instrumentation is stable rustc's SanitizerCoverage
# pass (what cargo-fuzz passes with `-s none`), built for the host triple so
# build scripts and proc-macros stay uninstrumented. Integer overflow and
# debug assertions are on. Prints a table of executions and coverage.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fuzz_dir=$root/fuzz
cache=${XDG_CACHE_HOME:-$HOME/.cache}/tollgate
corpus_root=${TOLLGATE_FUZZ_CORPUS:-$cache/fuzz-corpus}
export CARGO_TARGET_DIR=${TOLLGATE_FUZZ_TARGET_DIR:-$cache/fuzz-target}

log() { echo "fuzz.sh: $*" >&2; }
die() { log "error: $*"; exit 2; }

seconds=60
seed=
fresh_corpus=0
targets=()
while [ "$#" -gt 0 ]; do
  case $1 in
    --seconds)
      [ "$#" -ge 2 ] || die "--seconds needs a value"
      seconds=$2
      shift 2
      ;;
    --seconds=*) seconds=${1#--seconds=}; shift ;;
    --fresh-corpus) fresh_corpus=1; shift ;;
    --seed)
      [ "$#" -ge 2 ] || die "--seed needs a value"
      seed=$2
      shift 2
      ;;
    -h | --help) sed -n "2,18p" "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) targets+=("$1"); shift ;;
  esac
done
[[ $seconds =~ ^[1-9][0-9]*$ ]] || die "--seconds takes a whole number of seconds, got '$seconds'"
[ -z "$seed" ] || [[ $seed =~ ^[1-9][0-9]*$ ]] || die "--seed takes a positive whole number, got '$seed'"

all_targets=$(grep -A1 '^\[\[bin\]\]' "$fuzz_dir/Cargo.toml" | sed -n 's/^name = "\(.*\)"$/\1/p')
[ -n "$all_targets" ] || die "no [[bin]] targets in $fuzz_dir/Cargo.toml"
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets <<<"$all_targets"
fi
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$all_targets" || die "no fuzz target '$t' (targets: $(tr '\n' ' ' <<<"$all_targets"))"
done

host=$(rustc -vV | sed -n 's/^host: //p')
flags=(
  -Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
  --cfg fuzzing
  -Cdebug-assertions
  -Coverflow-checks
)
# fuzz/ is its own workspace with its own lock file, which must follow every
# dependency change of the crates it fuzzes.
(cd "$fuzz_dir" && cargo metadata --locked --format-version 1 >/dev/null 2>&1) ||
  die "fuzz/Cargo.lock is out of date with the workspace's crates; run: (cd fuzz && cargo update --workspace) and commit it"
log "building ${#targets[@]} targets for $host (target dir $CARGO_TARGET_DIR)"
bin_args=()
for t in "${targets[@]}"; do bin_args+=(--bin "$t"); done
(cd "$fuzz_dir" && RUSTFLAGS="${flags[*]}" cargo build --locked --release --target "$host" "${bin_args[@]}")
bin_dir=$CARGO_TARGET_DIR/$host/release

rows=()
failed=0
for t in "${targets[@]}"; do
  bin=$bin_dir/$t
  out=$(mktemp)
  regressions=0
  shopt -s nullglob
  cases=("$fuzz_dir/regressions/$t"/*)
  shopt -u nullglob
  if [ "${#cases[@]}" -gt 0 ]; then
    regressions=${#cases[@]}
    if ! "$bin" -runs=1 "${cases[@]}" >"$out" 2>&1; then
      tail -n 40 "$out" >&2
      log "$t: a regression input crashes it again (fuzz/regressions/$t)"
      rows+=("$(printf '%-22s %12s %9s %8s %6s  %s' "$t" - - - "$regressions" "REGRESSED")")
      failed=1
      rm -f "$out"
      continue
    fi
  fi
  corpus=$corpus_root/$t
  [ "$fresh_corpus" = 0 ] || corpus=$(mktemp -d)
  artifacts=$fuzz_dir/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  seed_dirs=()
  [ ! -d "$fuzz_dir/seeds/$t" ] || seed_dirs+=("$fuzz_dir/seeds/$t")
  log "$t: ${seconds}s"
  status=ok
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb: the targets bound
  # their own input sizes, so 2 GiB is a leak.
  seed_arg=()
  [ -z "$seed" ] || seed_arg=(-seed="$seed")
  if ! "$bin" "${seed_arg[@]}" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -max_len=262144 -artifact_prefix="$artifacts/" "$corpus" "${seed_dirs[@]}" >"$out" 2>&1; then
    tail -n 60 "$out" >&2
    status="CRASH (see fuzz/artifacts/$t)"
    failed=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n 1)
  per_sec=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$out" | tail -n 1 | cut -d' ' -f2 || true)
  rows+=("$(printf '%-22s %12s %9s %8s %6s  %s' "$t" "${execs:-?}" "${per_sec:-?}" "${cov:-?}" "$regressions" "$status")")
  rm -f "$out"
  [ "$fresh_corpus" = 0 ] || rm -rf "$corpus"
done

printf '%-22s %12s %9s %8s %6s  %s\n' target executions "exec/s" coverage regr result
printf '%s\n' "${rows[@]}"
[ "$failed" = 0 ] || { log "a target crashed or regressed (inputs in fuzz/artifacts)"; exit 1; }
