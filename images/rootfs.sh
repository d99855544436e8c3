#!/usr/bin/env bash
# Assembles the minimal root filesystem of one Tollgate image from Debian
# packages, without running any maintainer script: `apt-get download` the .debs,
# `dpkg-deb -x` them, drop documentation, add the few files the packages' scripts
# would have made (CA bundle, alternatives symlinks), users and /tmp, then check
# that every ELF binary resolves its libraries inside the rootfs.
#
# The one recipe for both builds: the Dockerfile's rootfs stages RUN this script,
# and images/build.sh (make images) runs it on the host. See docs/images.md.
#
# usage: images/rootfs.sh [--binary FILE] [--check FILE]... NAME OUTDIR
#   NAME      operator | recorder | gateway | pause | app
#   OUTDIR    created (must not exist, or be empty)
#   --binary FILE  install FILE as /usr/local/bin/tollgate-NAME (root, 0755)
#   --check FILE   only check that FILE's libraries resolve inside the rootfs
#                  (the Dockerfile COPYs the binary into the final stage itself)
#
# Environment:
#   TOLLGATE_DEB_CACHE  where downloaded .debs are kept
#                       (default ~/.cache/tollgate/images/debs)
#   SOURCE_DATE_EPOCH   every mtime in the rootfs is set to it (default 0)
set -euo pipefail

die() {
	echo "rootfs.sh: error: $*" >&2
	exit 1
}

usage() {
	sed -n '11,17p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

binary=""
checks=()
while [[ $# -gt 0 ]]; do
	case "$1" in
	--binary)
		[[ $# -ge 2 ]] || usage
		binary="$2"
		shift 2
		;;
	--check)
		[[ $# -ge 2 ]] || usage
		checks+=("$2")
		shift 2
		;;
	-h | --help) usage ;;
	--*) die "unknown option $1" ;;
	*) break ;;
	esac
done
[[ $# -eq 2 ]] || usage
name="$1"
out="$2"

# Packages per image. The tollgate binaries link only glibc and libgcc_s (TLS is
# rustls); the gateway also carries iptables (nf_tables backend) for
# `tollgate-gateway init-network`, with every library its tools and extensions
# load (the `ldd` check below fails the build when this list falls short).
base_pkgs=(libc6 libgcc-s1 ca-certificates)
iptables_pkgs=(iptables libxtables12 libip4tc2 libip6tc2 libnftnl11 libmnl0
	libnetfilter-conntrack3 libnfnetlink0 netbase)
case "$name" in
operator | recorder) pkgs=("${base_pkgs[@]}") ;;
gateway) pkgs=("${base_pkgs[@]}" "${iptables_pkgs[@]}") ;;
pause | app) pkgs=(busybox-static) ;;
*) die "unknown image '$name' (expected operator, recorder, gateway, pause or app)" ;;
esac
if [[ -n "$binary" ]]; then
	case "$name" in
	operator | recorder | gateway) ;;
	*) die "--binary is only for the tollgate images, not '$name'" ;;
	esac
	[[ -f "$binary" ]] || die "binary $binary does not exist (build it first)"
fi
for c in "${checks[@]}"; do
	[[ -f "$c" ]] || die "--check: $c does not exist"
done

for tool in apt-get apt-cache dpkg-deb find sort touch; do
	command -v "$tool" >/dev/null || die "$tool is needed (a Debian system with apt and dpkg)"
done

epoch="${SOURCE_DATE_EPOCH:-0}"
[[ "$epoch" =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be a number of seconds, got '$epoch'"
cache="${TOLLGATE_DEB_CACHE:-${HOME:-/root}/.cache/tollgate/images/debs}"
mkdir -p "$cache"

if [[ -e "$out" ]] && [[ -n "$(ls -A "$out")" ]]; then
	die "$out exists and is not empty"
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"

arch="$(dpkg --print-architecture)"
case "$arch" in
amd64) triplet=x86_64-linux-gnu loader=lib64/ld-linux-x86-64.so.2 ;;
arm64) triplet=aarch64-linux-gnu loader=lib/ld-linux-aarch64.so.1 ;;
*) die "unsupported architecture $arch (amd64 or arm64)" ;;
esac

# --- download (cached by the .deb file name, which carries the version) -------
debs=()
for pkg in "${pkgs[@]}"; do
	# The candidate version, e.g. libc6 2.36-9+deb12u10 amd64; `apt-get download`
	# names the file PKG_VERSION_ARCH.deb with an epoch's ':' written as %3a.
	fields="$(apt-cache show --no-all-versions "$pkg" 2>/dev/null |
		awk -F': ' '$1=="Version"{v=$2} $1=="Architecture"{a=$2} END{if(v!="")print v" "a}')"
	[[ -n "$fields" ]] || die "apt knows no package '$pkg' (run apt-get update?)"
	read -r pkg_version pkg_arch <<<"$fields"
	deb="$cache/${pkg}_${pkg_version//:/%3a}_${pkg_arch}.deb"
	if [[ ! -s "$deb" ]]; then
		echo "rootfs.sh: downloading $pkg $pkg_version" >&2
		sandbox=()
		if [[ "$(id -u)" == 0 ]]; then sandbox=(-o APT::Sandbox::User=root); fi
		# Into a private directory first: concurrent builds share the cache.
		dl="$(mktemp -d "$cache/.download-XXXXXX")"
		(cd "$dl" && apt-get download -q "${sandbox[@]}" "$pkg=$pkg_version" >/dev/null) ||
			{ rm -rf "$dl"; die "apt-get download $pkg=$pkg_version failed"; }
		[[ -s "$dl/$(basename "$deb")" ]] ||
			{ rm -rf "$dl"; die "apt-get download $pkg did not produce $(basename "$deb")"; }
		mv -f "$dl/$(basename "$deb")" "$deb"
		rm -rf "$dl"
	fi
	debs+=("$deb")
done

# --- unpack, no maintainer scripts ------------------------------------------
for deb in "${debs[@]}"; do
	dpkg-deb -x "$deb" "$out"
done

# --- trim: documentation, manuals, locales, packaging leftovers ----------------
rm -rf "$out/usr/share/doc" "$out/usr/share/man" "$out/usr/share/info" \
	"$out/usr/share/locale" "$out/usr/share/lintian" "$out/usr/share/bug" \
	"$out/usr/share/bash-completion" "$out/usr/share/menu" \
	"$out/usr/share/doc-base" "$out/usr/share/common-licenses"
case "$name" in
operator | recorder | gateway)
	# The CA bundle update-ca-certificates would write: every certificate that
	# /etc/ca-certificates.conf enables by default (all of mozilla/), in C order.
	certs="$out/usr/share/ca-certificates"
	[[ -d "$certs/mozilla" ]] || die "ca-certificates has no mozilla/ directory"
	mkdir -p "$out/etc/ssl/certs"
	bundle="$out/etc/ssl/certs/ca-certificates.crt"
	: >"$bundle"
	while IFS= read -r crt; do
		cat "$crt" >>"$bundle"
		# update-ca-certificates ensures each certificate ends with a newline.
		[[ -z "$(tail -c1 "$crt")" ]] || echo >>"$bundle"
	done < <(find "$certs/mozilla" -name '*.crt' | LC_ALL=C sort)
	[[ -s "$bundle" ]] || die "empty CA bundle"
	# Only the bundle stays; the tools that rebuild it cannot run in the image.
	rm -rf "$certs" "$out/usr/sbin/update-ca-certificates" "$out/etc/ca-certificates" \
		"$out/etc/ssl/certs/"*.pem "$out/usr/share/ca-certificates"
	# glibc's iconv modules and getconf helpers; nothing here uses them.
	rm -rf "$out/usr/lib/$triplet/gconv" "$out/usr/libexec" "$out/usr/lib/$triplet/audit"
	# glibc's debugging and profiling preloads.
	rm -f "$out/lib/$triplet/"{libmemusage.so,libpcprofile.so,libc_malloc_debug.so.0,libthread_db.so.1,libBrokenLocale.so.1}
	# /etc/ld.so.conf.d only matters to ldconfig, which is not in the image.
	rm -rf "$out/etc/ld.so.conf.d"
	;;
esac
if [[ "$name" == gateway ]]; then
	sbin="$out/usr/sbin"
	[[ -x "$sbin/xtables-nft-multi" ]] || die "iptables has no usr/sbin/xtables-nft-multi"
	# The legacy (x_tables) backend, the arptables/ebtables front ends and
	# iptables-xml are not used: init-network runs the nf_tables backend only.
	find "$sbin" -mindepth 1 -maxdepth 1 \( -name '*legacy*' -o -name 'arptables*' \
		-o -name 'ebtables*' -o -name 'iptables-apply' -o -name 'ip6tables-apply' \
		-o -name 'nfnl_osf' -o -name 'nfbpf_compile' \) -exec rm -f {} +
	rm -f "$out/usr/bin/iptables-xml" "$out/usr/share/iptables/iptables.xslt"
	rm -rf "$out/usr/share/iptables" "$out/etc/iptables"
	# What update-alternatives would make (there via /etc/alternatives and the
	# iptables-nft / ip6tables-nft names): the plain names on PATH, straight to
	# the multi-call binary, which dispatches on argv[0].
	for tool in iptables iptables-restore iptables-save \
		ip6tables ip6tables-restore ip6tables-save; do
		ln -sfn xtables-nft-multi "$sbin/$tool"
	done
	# netbase: keep the protocol and service tables iptables reads.
	rm -rf "$out/etc/rpc"
fi
if [[ "$name" == pause || "$name" == app ]]; then
	[[ -x "$out/bin/busybox" ]] || die "busybox-static has no bin/busybox"
	# Keep only the static binary (the package also ships an initramfs hook).
	find "$out" -mindepth 1 -maxdepth 1 ! -name bin -exec rm -rf {} +
	find "$out/bin" -mindepth 1 ! -name busybox -exec rm -rf {} +
	if [[ "$name" == pause ]]; then
		applets=(sh sleep)
	else
		applets=(sh sleep wget nc nslookup cat echo env id ls ps hostname ip
			ping printf test true false kill mkdir rm timeout grep head tail wc)
	fi
	for a in "${applets[@]}"; do
		ln -sfn busybox "$out/bin/$a"
	done
fi
find "$out" -depth -type d -empty -not -path "$out" -delete

# --- the tollgate binary -----------------------------------------------------
if [[ -n "$binary" ]]; then
	install -D -m 0755 -o 0 -g 0 "$binary" "$out/usr/local/bin/tollgate-$name" 2>/dev/null ||
		install -D -m 0755 "$binary" "$out/usr/local/bin/tollgate-$name"
fi

# --- users, groups, /tmp -------------------------------------------------------
mkdir -p "$out/etc" "$out/tmp"
cat >"$out/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
tollgate-gateway:x:15080:15080:tollgate-gateway:/nonexistent:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat >"$out/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
tollgate-gateway:x:15080:
nogroup:x:65534:
EOF
if [[ "$name" != pause && "$name" != app ]]; then
	# glibc's default without this file tries DNS before /etc/hosts.
	echo 'hosts: files dns' >"$out/etc/nsswitch.conf"
	mkdir -p "$out/home/nonroot"
	chmod 0755 "$out/home/nonroot"
fi
chmod 0644 "$out/etc/passwd" "$out/etc/group"
chmod 1777 "$out/tmp"

# --- check: every ELF binary resolves its libraries inside the rootfs -----------
is_elf() { [[ "$(head -c4 "$1" | od -An -c | tr -d ' ')" == '177ELF' ]]; }
check_libs() {
	local file="$1" listing
	if ! listing="$("$out/$loader" --library-path "$out/lib/$triplet:$out/usr/lib/$triplet" \
		--list "$file" 2>&1)"; then
		# A static binary: the loader refuses it, which is fine.
		if [[ "$listing" == *"not a dynamic executable"* ]] || ! is_elf "$file"; then
			return 0
		fi
		die "cannot list the libraries of ${file#"$out"}: $listing"
	fi
	if grep -q 'not found' <<<"$listing"; then
		die "${file#"$out"} needs libraries missing from the $name rootfs:
$(grep 'not found' <<<"$listing")"
	fi
	# Every resolved library must come from the rootfs, not the host.
	local bad
	bad="$(grep '=>' <<<"$listing" | awk '{print $3}' | grep -v "^$out/" || true)"
	[[ -z "$bad" ]] || die "${file#"$out"} resolved libraries outside the rootfs: $bad"
}
if [[ -x "$out/$loader" ]]; then
	checked=0
	while IFS= read -r -d '' f; do
		is_elf "$f" || continue
		check_libs "$f"
		checked=$((checked + 1))
	done < <(find "$out" -type f \( -perm -u+x -o -name '*.so*' \) -print0)
	for c in "${checks[@]}"; do
		check_libs "$(cd "$(dirname "$c")" && pwd)/$(basename "$c")"
		checked=$((checked + 1))
	done
	echo "rootfs.sh: $name: $checked ELF files resolve all libraries inside the rootfs" >&2
elif [[ "$name" != pause && "$name" != app ]]; then
	die "the $name rootfs has no loader $loader"
fi

# --- reproducible timestamps --------------------------------------------------
find "$out" -exec touch -h -d "@$epoch" {} +

echo "rootfs.sh: $name rootfs in $out ($(du -sh "$out" | cut -f1))" >&2
