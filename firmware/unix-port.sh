#!/usr/bin/env bash
# Builds the MicroPython Unix port (1.25.0) from Debian trixie's source package into build/.
# The sources are pinned by sha256; Debian's own patches are applied first (they make the
# port link bookworm's system mbedTLS), and micropython-lib parts are left out of the frozen
# manifest because Debian strips micropython-lib from its source package.
set -euo pipefail
out=${1:-build}
version=1.25.0+ds
debrev=1
pool=http://deb.debian.org/debian/pool/main/m/micropython
declare -A sums=(
  ["micropython_${version}.orig.tar.xz"]=7b25be99a502f070b2de81dafc08da7051d992325d6e67daa9045a918fffdbea
  ["micropython_${version}-${debrev}.debian.tar.xz"]=87cd89f7900c86b963885dabe25acf3e5348815993f1500278ad8f6464465af4
)
mkdir -p "$out/dl"
for f in "${!sums[@]}"; do
  if [ ! -f "$out/dl/$f" ] || ! echo "${sums[$f]}  $out/dl/$f" | sha256sum -c --status; then
    curl -sSfL --retry 3 -o "$out/dl/$f.part" "$pool/$f"
    echo "${sums[$f]}  $out/dl/$f.part" | sha256sum -c --status \
      || { echo "unix-port: checksum mismatch for $f" >&2; exit 1; }
    mv "$out/dl/$f.part" "$out/dl/$f"
  fi
done
src="$out/micropython-src"
rm -rf "$src" && mkdir -p "$src"
tar -xJf "$out/dl/micropython_${version}.orig.tar.xz" -C "$src" --strip-components=1
tar -xJf "$out/dl/micropython_${version}-${debrev}.debian.tar.xz" -C "$src"
while read -r p; do
  [ -n "$p" ] && patch -d "$src" -p1 --forward -s < "$src/debian/patches/$p"
done < "$src/debian/patches/series"
echo 'include("$(MPY_DIR)/extmod/asyncio")' > "$src/unix-manifest.py"
jobs=$(nproc)
# mpy-cross first and without FROZEN_MANIFEST: the variable would leak into its sub-make.
make -s -j"$jobs" -C "$src/mpy-cross" >"$out/unix-port.log" 2>&1
make -s -j"$jobs" -C "$src/ports/unix" FROZEN_MANIFEST="$(cd "$src" && pwd)/unix-manifest.py" \
  MICROPY_SSL_AXTLS=0 MICROPY_SSL_MBEDTLS=1 MICROPY_PY_BTREE=0 STRIP=true >>"$out/unix-port.log" 2>&1 \
  || { tail -20 "$out/unix-port.log" >&2; exit 1; }
cp "$src/ports/unix/build-standard/micropython" "$out/micropython"
"$out/micropython" -c 'import sys, tls; assert sys.implementation.version[:3] == (1, 25, 0), sys.version'
echo "unix-port: built $out/micropython (MicroPython 1.25.0)"
