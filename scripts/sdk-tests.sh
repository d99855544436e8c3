#!/usr/bin/env bash
# The gateway's real-client suite (gateway/tests/sdk): the official openai,
# anthropic, google-genai and boto3 Python SDKs (pinned in gateway/tests/sdk/requirements.txt) drive tollgate-gateway against a local TLS mock upstream
# that speaks the providers' wire formats. Everything stays on 127.0.0.1.
#
# Usage: scripts/sdk-tests.sh [pytest args...]   e.g. -k stream -x
# Exits with pytest's code; "no tests collected" (5) counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
# The pinned clients (a no-op when they are installed already).
"$PYTHON" -m pip install --quiet --disable-pip-version-check -r gateway/tests/sdk/requirements.txt 2>&1 \
  | grep -v "Running pip as the 'root' user" >&2 || true
"$PYTHON" -c 'import openai, anthropic, google.genai, boto3, pytest, websocket' \
  || { echo "sdk-tests: the clients in gateway/tests/sdk/requirements.txt did not install" >&2; exit 1; }
command -v openssl >/dev/null || { echo "sdk-tests: openssl is required (scripts/install-test-deps.sh installs it)" >&2; exit 1; }
command -v chromium >/dev/null || { echo "sdk-tests: chromium is required for the dashboard test (scripts/install-test-deps.sh installs it)" >&2; exit 1; }

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
