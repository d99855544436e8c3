#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL on loopback (e2e/postgres.sh) and
# TOLLGATE_TEST_POSTGRES_URL exported, then stops PostgreSQL whatever happened.
#
#   scripts/with-postgres.sh cargo test --workspace
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/e2e/postgres.sh" up
trap '"$root/e2e/postgres.sh" down' EXIT
eval "$("$root/e2e/postgres.sh" env)"
"$@"
