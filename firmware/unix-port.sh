#!/usr/bin/env bash
# Builds the MicroPython Unix port (1.25.0) from Debian trixie's source package into build/.
#   unix-port.sh OUT          -> OUT/micropython (fresh sources every time)
#   unix-port.sh OUT frozen   -> OUT/micropython-frozen: the same port with the device code frozen
#                                in (firmware/unix-frozen-manifest.py); reuses the sources and
#                                objects of the first, so a rebuild after a change in lib/ is quick
# The sources are pinned by sha256; Debian's own patches are applied first (they make the
# port link a system mbedTLS), and micropython-lib parts are left out of the frozen
# manifest because Debian strips micropython-lib from its source package.
#
# mbedTLS is bookworm's 2.28.3 source built here with its upstream default configuration and
# linked statically, not bookworm's libmbedtls: Debian's build enables MBEDTLS_HAVEGE_C, whose
# 37,960-byte state sits inside the entropy context that every tls.SSLContext carries on the
# MicroPython heap (40 KB per context instead of 3 KB). ESP-IDF's mbedTLS has no HAVEGE either,
# so heap figures measured here are close to a board's.
set -euo pipefail
out=${1:-build}
variant=${2:-standard}
here=$(cd "$(dirname "$0")" && pwd)
version=1.25.0+ds
debrev=1
pool=http://deb.debian.org/debian/pool/main/m/micropython
mbedtls=2.28.3
mbedtls_pool=http://deb.debian.org/debian/pool/main/m/mbedtls
declare -A sums=(
  ["micropython_${version}.orig.tar.xz"]=7b25be99a502f070b2de81dafc08da7051d992325d6e67daa9045a918fffdbea
  ["micropython_${version}-${debrev}.debian.tar.xz"]=87cd89f7900c86b963885dabe25acf3e5348815993f1500278ad8f6464465af4
  ["mbedtls_${mbedtls}.orig.tar.gz"]=3b4953aa55a681e084d31892d9904cc5328d6b4958ea57b90ae4b4f94ae69a8d
)
src="$out/micropython-src"
tlssrc="$out/mbedtls-src"
log="$out/unix-port.log"
jobs=$(nproc)

fail() {
  echo "unix-port: $*" >&2
  exit 1
}

fetch() {
  mkdir -p "$out/dl"
  local f url
  for f in "${!sums[@]}"; do
    if [ ! -f "$out/dl/$f" ] || ! echo "${sums[$f]}  $out/dl/$f" | sha256sum -c --status; then
      case $f in mbedtls_*) url=$mbedtls_pool/$f ;; *) url=$pool/$f ;; esac
      curl -sSfL --retry 3 -o "$out/dl/$f.part" "$url"
      echo "${sums[$f]}  $out/dl/$f.part" | sha256sum -c --status || fail "checksum mismatch for $f"
      mv "$out/dl/$f.part" "$out/dl/$f"
    fi
  done
}

# Pristine patched sources, mbedTLS's static libraries and mpy-cross; the stamp says they are
# complete (an interrupted run leaves no stamp and starts over).
prepare() {
  local stamp="$src/.prepared"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${sums[*]}" ] && return 0
  fetch
  rm -rf "$src" "$tlssrc" && mkdir -p "$src" "$tlssrc"
  tar -xJf "$out/dl/micropython_${version}.orig.tar.xz" -C "$src" --strip-components=1
  tar -xJf "$out/dl/micropython_${version}-${debrev}.debian.tar.xz" -C "$src"
  while read -r p; do
    [ -n "$p" ] && patch -d "$src" -p1 --forward -s < "$src/debian/patches/$p"
  done < "$src/debian/patches/series"
  echo 'include("$(MPY_DIR)/extmod/asyncio")' > "$src/unix-manifest.py"
  tar -xzf "$out/dl/mbedtls_${mbedtls}.orig.tar.gz" -C "$tlssrc" --strip-components=1
  grep -q '^//#define MBEDTLS_HAVEGE_C' "$tlssrc/include/mbedtls/config.h" \
    || fail "mbedTLS's default config enables HAVEGE"
  make -s -j"$jobs" -C "$tlssrc/library" static CFLAGS="-O2" >"$log" 2>&1 \
    || { tail -20 "$log" >&2; fail "mbedTLS did not build"; }
  # mpy-cross first and without FROZEN_MANIFEST: the variable would leak into its sub-make.
  make -s -j"$jobs" -C "$src/mpy-cross" >>"$log" 2>&1 \
    || { tail -20 "$log" >&2; fail "mpy-cross did not build"; }
  echo "${sums[*]}" > "$stamp"
}

# build VARIANT_DIR PROG MANIFEST
build() {
  local tls
  tls=$(cd "$tlssrc" && pwd)
  make -s -j"$jobs" -C "$src/ports/unix" BUILD="$1" PROG="$2" FROZEN_MANIFEST="$3" \
    MICROPY_SSL_AXTLS=0 MICROPY_SSL_MBEDTLS=1 MICROPY_PY_BTREE=0 STRIP=true \
    CFLAGS_EXTRA="-I$tls/include" LDFLAGS_EXTRA="-L$tls/library" >>"$log" 2>&1 \
    || { tail -20 "$log" >&2; fail "the Unix port did not build"; }
  cp "$src/ports/unix/$1/$2" "$out/$2.part"
  "$out/$2.part" -c 'import sys, tls; assert sys.implementation.version[:3] == (1, 25, 0), sys.version'
  # The static mbedTLS is the one linked, not a shared library that would bring HAVEGE back.
  ! ldd "$out/$2.part" | grep -q libmbed || fail "$2 links a shared mbedTLS"
  mv "$out/$2.part" "$out/$2"
  echo "unix-port: built $out/$2 (MicroPython 1.25.0)"
}

case $variant in
  standard)
    rm -f "$src/.prepared"  # the plain port always starts from fresh sources
    prepare
    build build-standard micropython "$(cd "$src" && pwd)/unix-manifest.py"
    ;;
  frozen)
    prepare
    # umqtt.simple is frozen from build/upylib (fetched, pinned and unmodified).
    [ -f "$out/upylib/umqtt/simple.py" ] || fail "umqtt.simple is missing: run make umqtt"
    build build-frozen micropython-frozen "$here/unix-frozen-manifest.py"
    ;;
  *) fail "unknown variant $variant (standard or frozen)" ;;
esac
