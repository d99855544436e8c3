#!/usr/bin/env bash
# Vendors the dashboard's charting library, uPlot (MIT), from the npm package
# into recorder/dashboard/vendor/uplot, and checks the files against the hashes
# pinned below. The recorder compiles them into its binary (recorder/src/dashboard.rs),
# so the page needs no CDN; a unit test fails when the files and the pins differ.
#
# To move to another release: change VERSION, run this with UPDATE=1, review
# the new hashes it prints, and pin them below.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.6.32
# sha256 of the files as the package ships them (sha256sum format).
PINNED='
19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f  uPlot.iife.min.js
df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04  uPlot.min.css
'

dest=recorder/dashboard/vendor/uplot
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$VERSION" >/dev/null && tar xzf "uplot-$VERSION.tgz")
dist=$work/package/dist
if [ "${UPDATE:-0}" = 1 ]; then
  (cd "$dist" && sha256sum uPlot.iife.min.js uPlot.min.css)
else
  # Checked before anything is copied: a mismatch leaves the tree as it was.
  (cd "$dist" && sha256sum --quiet -c <(printf '%s' "$PINNED" | sed '/^$/d'))
fi
mkdir -p "$dest"
cp "$dist/uPlot.iife.min.js" "$dist/uPlot.min.css" "$dest/"
cp "$work/package/LICENSE" "$dest/LICENSE"
echo "uPlot $VERSION (npm package uplot), files from its dist/ folder, unchanged." > "$dest/VERSION"
echo "vendor-uplot: uPlot $VERSION copied to $dest" >&2
