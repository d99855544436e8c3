#!/usr/bin/env bash
# Builds Tollgate's container images without a container engine: cargo builds
# the binaries, images/rootfs.sh assembles each root filesystem (the recipe the
# Dockerfile also runs), images/docker-archive.py writes target/images/NAME.tar,
# which `ctr -n k8s.io images import` and `docker load` accept.
#
# usage: images/build.sh [NAME...]
#   NAME: operator recorder gateway (the default: all three), and the test-only
#   images pause and app (no cargo needed; also built by default when
#   E2E_IMAGES=1).
#
# Environment:
#   PROFILE=release|debug  cargo profile (default release)
#   STRIP=debug|none       copy the binaries without debug info (objcopy
#                          --strip-debug; the default, as in the Dockerfile) or as built
#   OUT_DIR                where the archives go (default target/images)
#   TOLLGATE_BIN_DIR       take tollgate-NAME from this directory, skip cargo
#   SOURCE_DATE_EPOCH      timestamps (default: the last commit's time)
#   VERSION, REVISION      image version/tag and revision label (default: the
#                          workspace version in Cargo.toml, `git rev-parse HEAD`)
#   E2E_IMAGES=1           with no NAME, build pause and app too
#   KEEP_ROOTFS=1          keep the rootfs as OUT_DIR/rootfs/NAME
#   CARGO                  cargo command (default cargo)
set -euo pipefail

die() {
	echo "build.sh: error: $*" >&2
	exit 1
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

profile="${PROFILE:-release}"
case "$profile" in
release) cargo_profile=(--release) ;;
debug) cargo_profile=() ;;
*) die "PROFILE must be release or debug, got '$profile'" ;;
esac
strip="${STRIP:-debug}"
case "$strip" in
debug | none) ;;
*) die "STRIP must be debug or none, got '$strip'" ;;
esac
out_dir="${OUT_DIR:-$repo/target/images}"
mkdir -p "$out_dir"
out_dir="$(cd "$out_dir" && pwd)"

if [[ $# -gt 0 ]]; then
	names=("$@")
else
	names=(operator recorder gateway)
	if [[ "${E2E_IMAGES:-}" == 1 ]]; then
		names+=(pause app)
	fi
fi
tollgate=()
for n in "${names[@]}"; do
	case "$n" in
	operator | recorder | gateway) tollgate+=("$n") ;;
	pause | app) ;;
	*) die "unknown image '$n' (expected operator, recorder, gateway, pause or app)" ;;
	esac
done

# Workspace metadata: version, license, source (the chart's appVersion is the
# same version; images/test_images.py checks it).
read_workspace() {
	python3 - "$repo/Cargo.toml" "$1" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print(tomllib.load(f)["workspace"]["package"][sys.argv[2]])
EOF
}
version="${VERSION:-$(read_workspace version)}"
license="$(read_workspace license)"
source_url="$(read_workspace repository)"
if [[ -z "${REVISION:-}" ]]; then
	REVISION="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
fi
if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
	SOURCE_DATE_EPOCH="$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)"
fi
export SOURCE_DATE_EPOCH

# Per-run scratch space inside OUT_DIR (same filesystem), so that concurrent
# builds do not share a rootfs; archives are replaced atomically.
work="$(mktemp -d "$out_dir/.build-XXXXXX")"
trap 'rm -rf "$work"' EXIT

# --- binaries ---------------------------------------------------------------
bin_dir=""
if [[ ${#tollgate[@]} -gt 0 ]]; then
	if [[ -n "${TOLLGATE_BIN_DIR:-}" ]]; then
		bin_dir="$(cd "$TOLLGATE_BIN_DIR" && pwd)"
	else
		cargo_args=(build --locked "${cargo_profile[@]}")
		for n in "${tollgate[@]}"; do
			cargo_args+=(-p "tollgate-$n" --bin "tollgate-$n")
		done
		echo "build.sh: ${CARGO:-cargo} ${cargo_args[*]}" >&2
		${CARGO:-cargo} "${cargo_args[@]}"
		target_dir="${CARGO_TARGET_DIR:-$repo/target}"
		bin_dir="$target_dir/$profile"
	fi
	if [[ "$strip" == debug ]]; then
		# Copies without debug info (the profiles keep line tables, three
		# quarters of a release binary); the symbol table stays, so panics
		# still name functions. target/ is untouched.
		stripped="$work/bin"
		mkdir -p "$stripped"
		for n in "${tollgate[@]}"; do
			src="$bin_dir/tollgate-$n"
			[[ -f "$src" ]] || die "$src missing after cargo build"
			objcopy --strip-debug "$src" "$stripped/tollgate-$n.tmp"
			mv "$stripped/tollgate-$n.tmp" "$stripped/tollgate-$n"
		done
		bin_dir="$stripped"
	fi
fi

# --- images -----------------------------------------------------------------
description() {
	case "$1" in
	operator) echo "Tollgate operator: reconciles the policy CRDs and serves the admission webhooks that inject the gateway sidecar." ;;
	recorder) echo "Tollgate recorder: verifies and stores the signed receipts gateways emit." ;;
	gateway) echo "Tollgate gateway: the injected LLM egress sidecar, and its init-network init container (iptables, nf_tables backend)." ;;
	esac
}

path_env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
for n in "${names[@]}"; do
	rootfs="$work/rootfs-$n"
	args=(--rootfs "$rootfs" --output "$out_dir/$n.tar" --epoch "$SOURCE_DATE_EPOCH"
		--workdir / --env "$path_env")
	case "$n" in
	operator | recorder | gateway)
		bin="$bin_dir/tollgate-$n"
		[[ -f "$bin" ]] || die "$bin not found (build it, or set TOLLGATE_BIN_DIR)"
		"$here/rootfs.sh" --binary "$bin" "$n" "$rootfs"
		if [[ "$n" == gateway ]]; then user=15080:15080; else user=65532:65532; fi
		args+=(--tag "tollgate/$n:$version" --user "$user"
			--entrypoint "[\"/usr/local/bin/tollgate-$n\"]"
			--env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
			--label "org.opencontainers.image.title=tollgate-$n"
			--label "org.opencontainers.image.description=$(description "$n")"
			--label "org.opencontainers.image.source=$source_url"
			--label "org.opencontainers.image.licenses=$license"
			--label "org.opencontainers.image.version=$version"
			--label "org.opencontainers.image.revision=$REVISION")
		;;
	pause)
		"$here/rootfs.sh" "$n" "$rootfs"
		# Sleeps until SIGTERM or SIGINT; as PID 1 the traps are what make
		# those signals end it (untrapped signals are ignored for PID 1).
		args+=(--tag "tollgate-e2e/pause:1"
			--entrypoint '["/bin/sh","-c","trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait; done"]'
			--label "org.opencontainers.image.title=tollgate-e2e-pause"
			--label "org.opencontainers.image.description=Test-only pod sandbox (pause) image for the e2e cluster.")
		;;
	app)
		"$here/rootfs.sh" "$n" "$rootfs"
		# Cmd, not Entrypoint: a pod's `command` or `args` replaces it whole.
		args+=(--tag "tollgate-e2e/app:1"
			--cmd '["/bin/sh","-c","trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait; done"]'
			--label "org.opencontainers.image.title=tollgate-e2e-app"
			--label "org.opencontainers.image.description=Test-only application image (busybox: wget, nc, nslookup, sh) for the e2e suites.")
		;;
	esac
	python3 "$here/docker-archive.py" "${args[@]}"
	if [[ "${KEEP_ROOTFS:-}" == 1 ]]; then
		mkdir -p "$out_dir/rootfs"
		rm -rf "$out_dir/rootfs/$n"
		mv "$rootfs" "$out_dir/rootfs/$n"
	fi
done
echo "build.sh: done: $(for n in "${names[@]}"; do printf '%s ' "$out_dir/$n.tar"; done)" >&2
