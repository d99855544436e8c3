#!/usr/bin/env bash
# The gateway links nothing of the control plane. Fails if tollgate-gateway's
# normal dependency tree, or the gateway binary of a `--workspace` build (where
# Cargo unifies features across every crate), holds kube, k8s-openapi,
# schemars, rusqlite or tokio-postgres, or any Tollgate crate but the wire
# contract and the evidence library.
#
#   scripts/check-gateway-deps.sh [BINARY]   (default: target/debug/tollgate-gateway)
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
FORBIDDEN='kube|kube-client|kube-core|kube-runtime|k8s-openapi|schemars|rusqlite|libsqlite3-sys|tokio-postgres|postgres-protocol'
OURS_ALLOWED='tollgate-gateway|tollgate-wire|tollgate-evidence'
failed=0

tree=$($CARGO tree --locked -p tollgate-gateway -e normal,build --prefix none --format '{p}' | awk '{print $1}' | sort -u)
if bad=$(grep -Ex "$FORBIDDEN" <<<"$tree"); then
    echo "check-gateway-deps: tollgate-gateway depends on: $(tr '\n' ' ' <<<"$bad")" >&2
    failed=1
fi
if bad=$(grep -E '^tollgate-' <<<"$tree" | grep -Evx "$OURS_ALLOWED"); then
    echo "check-gateway-deps: tollgate-gateway depends on our crates: $(tr '\n' ' ' <<<"$bad")" >&2
    failed=1
fi

binary=${1:-target/debug/tollgate-gateway}
if [[ ! -f $binary ]]; then
    echo "check-gateway-deps: $binary does not exist; build the workspace first (cargo build --workspace --bins)" >&2
    exit 1
fi
# Symbol names carry their crate (`kube_client::...`); crate names use '_'.
symbols=$(nm --demangle "$binary" 2>/dev/null | grep -Eo '\b(kube|kube_client|kube_core|kube_runtime|k8s_openapi|schemars|rusqlite|libsqlite3_sys|tokio_postgres|postgres_protocol|tollgate_crds|tollgate_recorder|tollgate_operator)::' | sort | uniq -c || true)
if [[ -n $symbols ]]; then
    echo "check-gateway-deps: $binary links:" >&2
    echo "$symbols" >&2
    failed=1
fi
if [[ $(nm "$binary" 2>/dev/null | wc -l) -lt 1000 ]]; then
    echo "check-gateway-deps: $binary has no symbol table to check (stripped?)" >&2
    failed=1
fi
deps=$(wc -l <<<"$tree")
size=$(stat -c %s "$binary")
if ((failed)); then
    exit 1
fi
echo "check-gateway-deps: ok: $deps crates in tollgate-gateway's tree, none of the control plane; $binary ($size bytes) links none of them"
