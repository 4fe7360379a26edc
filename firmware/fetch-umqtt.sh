#!/usr/bin/env bash
# Fetches umqtt.simple 1.3.4 from PyPI into build/upylib/umqtt/ for the Unix port.
# PyPI's copy is an upip-style sdist that pip cannot build, so pip only downloads and
# unpacks it (--no-clean keeps the unpacked tree); both the archive (pip --require-hashes)
# and the module itself are pinned by sha256. The file is used as published, never edited.
set -euo pipefail
out=${1:-build}
pip=${PIP:-pip}
archive_sum=b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f
module_sum=8555d2f654deb8eb0d724f79b0811a78cc94029d070f3d96bbd74288653d63a5
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "micropython-umqtt.simple==1.3.4 --hash=sha256:$archive_sum" > "$tmp/req.txt"
# pip exits non-zero after unpacking (no setup.py); the checks below decide.
TMPDIR="$tmp" "$pip" download -q --no-deps --no-clean --require-hashes -r "$tmp/req.txt" \
  -d "$tmp/dl" >"$tmp/pip.log" 2>&1 || true
if grep -q "THESE PACKAGES DO NOT MATCH THE HASHES" "$tmp/pip.log"; then
  echo "umqtt: archive checksum mismatch" >&2; exit 1
fi
found=$(find "$tmp" -path '*/umqtt/simple.py' | head -1)
[ -n "$found" ] || { cat "$tmp/pip.log" >&2; echo "umqtt: download failed" >&2; exit 1; }
echo "$module_sum  $found" | sha256sum -c --status || { echo "umqtt: module checksum mismatch" >&2; exit 1; }
mkdir -p "$out/upylib/umqtt"
cp "$found" "$out/upylib/umqtt/simple.py"
echo "umqtt: build/upylib/umqtt/simple.py (umqtt.simple 1.3.4)"
