#!/usr/bin/env bash
# The gateway's real-client suite (gateway/tests/sdk): the official openai and
# anthropic Python SDKs drive tollgate-gateway against a local TLS mock upstream
# that speaks the providers' wire formats. Everything stays on 127.0.0.1.
#
# Usage: scripts/sdk-tests.sh [pytest args...]   e.g. -k stream -x
# Exits with pytest's code; "no tests collected" (5) counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import openai, anthropic, pytest' 2>/dev/null; then
  echo "sdk-tests: pip install openai anthropic pytest" >&2
  "$PYTHON" -m pip install --quiet openai anthropic pytest
fi
command -v openssl >/dev/null || { echo "sdk-tests: openssl is required (scripts/install-test-deps.sh installs it)" >&2; exit 1; }

cargo build -p tollgate-gateway -p tollgate-cli

export TOLLGATE_SDK_SKIP_BUILD=1   # built above; the fixtures reuse target/debug
export PYTHONDONTWRITEBYTECODE=1
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"
rc=0
"$PYTHON" -m pytest gateway/tests/sdk -q "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "sdk-tests: pytest collected no tests; counting that as a failure" >&2
  exit 1
fi
exit "$rc"
