#!/usr/bin/env bash
# Builds the simulated ESP32 boards: the MicroPython Unix port, from Debian's source packages,
# 32-bit (MICROPY_FORCE_32BIT=1: objects and pointers have an ESP32's sizes), with the board's
# memory model (firmware/board/: mbedTLS on a capped ESP-IDF heap, the GC heap growing from it
# as on ports/esp32; docs/board-model.md).
#   unix-port.sh OUT [board]     -> OUT/micropython: the stock-firmware board, MicroPython 1.25.0
#                                   (asyncio, umqtt.simple, the sim/ stand-ins frozen in:
#                                   firmware/unix-board-manifest.py); lib/ is loaded as .mpy
#   unix-port.sh OUT frozen      -> OUT/micropython-frozen: the custom-firmware board, the device
#                                   library frozen in too (firmware/unix-frozen-manifest.py)
#   unix-port.sh OUT board-1.26  -> OUT/micropython-1.26: the stock-firmware board on the newest
#                                   MicroPython in Debian (sid: 1.26.1)
# Each reuses the pristine sources, mbedTLS and mpy-cross of earlier runs (a stamp says they are
# complete and built with the current settings), so a rebuild after a change in lib/ or sim/
# only refreezes. The sources are pinned by sha256; Debian's patches are applied first (they
# make the port link a system mbedTLS), and micropython-lib parts are left out of the frozen
# manifests because Debian strips micropython-lib from its source package.
#
# mbedTLS is bookworm's 2.28.3 source built here, 32-bit and linked statically, with its upstream
# default configuration plus the ESP32 firmware's settings (firmware/board/mbedtls_esp32.h: 16 KB
# in / 4 KB out record buffers, every allocation from the modelled IDF heap). Not bookworm's
# libmbedtls: Debian's build enables MBEDTLS_HAVEGE_C, a 38 KB state inside every entropy
# context; ESP-IDF's mbedTLS has no HAVEGE either.
set -euo pipefail
out=${1:-build}
variant=${2:-board}
here=$(cd "$(dirname "$0")" && pwd)
pool=http://deb.debian.org/debian/pool/main/m/micropython
mbedtls=2.28.3
mbedtls_pool=http://deb.debian.org/debian/pool/main/m/mbedtls
declare -A sums=(
  ["micropython_1.25.0+ds.orig.tar.xz"]=7b25be99a502f070b2de81dafc08da7051d992325d6e67daa9045a918fffdbea
  ["micropython_1.25.0+ds-1.debian.tar.xz"]=87cd89f7900c86b963885dabe25acf3e5348815993f1500278ad8f6464465af4
  ["micropython_1.26.1+ds.orig.tar.xz"]=f5ad2ec89d3e921f753d448955af98b6005655f84ba26087dde6ba0e8d062f34
  ["micropython_1.26.1+ds-1.debian.tar.xz"]=1f6af20cc729518aeeb039455d43d5cd6fe7cb94f6ecff9980836003bdf795c2
  ["mbedtls_${mbedtls}.orig.tar.gz"]=3b4953aa55a681e084d31892d9904cc5328d6b4958ea57b90ae4b4f94ae69a8d
)
tlssrc="$out/mbedtls-src"
log="$out/unix-port.log"
jobs=$(nproc)
board="$here/board"
# What the prepared sources and libraries were built with: a change rebuilds them from scratch.
settings="m32 $(cat "$board/mbedtls_esp32.h" | sha256sum | cut -c1-16)"

fail() {
  echo "unix-port: $*" >&2
  exit 1
}

fetch() {  # fetch FILE...
  mkdir -p "$out/dl"
  local f url
  for f in "$@"; do
    if [ ! -f "$out/dl/$f" ] || ! echo "${sums[$f]}  $out/dl/$f" | sha256sum -c --status; then
      case $f in mbedtls_*) url=$mbedtls_pool/$f ;; *) url=$pool/$f ;; esac
      curl -sSfL --retry 3 -o "$out/dl/$f.part" "$url"
      echo "${sums[$f]}  $out/dl/$f.part" | sha256sum -c --status || fail "checksum mismatch for $f"
      mv "$out/dl/$f.part" "$out/dl/$f"
    fi
  done
}

# mbedTLS's static libraries, 32-bit, with the board's settings.
prepare_tls() {
  local stamp="$tlssrc/.prepared" f="mbedtls_${mbedtls}.orig.tar.gz"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${sums[$f]} $settings" ] && return 0
  fetch "$f"
  rm -rf "$tlssrc" && mkdir -p "$tlssrc"
  tar -xzf "$out/dl/$f" -C "$tlssrc" --strip-components=1
  grep -q '^//#define MBEDTLS_HAVEGE_C' "$tlssrc/include/mbedtls/config.h" \
    || fail "mbedTLS's default config enables HAVEGE"
  make -s -j"$jobs" -C "$tlssrc/library" static \
    CFLAGS="-O2 -m32 -include $board/mbedtls_esp32.h" >"$log" 2>&1 \
    || { tail -20 "$log" >&2; fail "mbedTLS did not build (32-bit: is gcc-multilib installed?)"; }
  echo "${sums[$f]} $settings" > "$stamp"
}

# prepare VERSION SRC: pristine patched sources and mpy-cross.
prepare() {
  local version=$1 src=$2
  local orig="micropython_${version}+ds.orig.tar.xz" deb="micropython_${version}+ds-1.debian.tar.xz"
  local stamp="$src/.prepared"
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${sums[$orig]} ${sums[$deb]} $settings" ] && return 0
  fetch "$orig" "$deb"
  rm -rf "$src" && mkdir -p "$src"
  tar -xJf "$out/dl/$orig" -C "$src" --strip-components=1
  tar -xJf "$out/dl/$deb" -C "$src"
  while read -r p; do
    [ -n "$p" ] && patch -d "$src" -p1 --forward -s < "$src/debian/patches/$p"
  done < "$src/debian/patches/series"
  # mpy-cross first and without FROZEN_MANIFEST: the variable would leak into its sub-make.
  make -s -j"$jobs" -C "$src/mpy-cross" >>"$log" 2>&1 \
    || { tail -20 "$log" >&2; fail "mpy-cross $version did not build"; }
  echo "${sums[$orig]} ${sums[$deb]} $settings" > "$stamp"
}

# build VERSION SRC BUILD_DIR PROG MANIFEST
build() {
  local version=$1 src=$2 tls
  tls=$(cd "$tlssrc" && pwd)
  # umqtt.simple is frozen from build/upylib (fetched, pinned and unmodified).
  [ -f "$out/upylib/umqtt/simple.py" ] || fail "umqtt.simple is missing: run make umqtt"
  # -Wno-pointer-arith: py/gc.c's split-heap growth, which ports/esp32 compiles, does void * arithmetic.
  # The frozen modules' C file names the qstrs the port lacks: a change of the C modules' names
  # (firmware/board/) must regenerate it, which make's dependencies do not see.
  rm -f "$src/ports/unix/$3/frozen_content.c"
  make -s -j"$jobs" -C "$src/ports/unix" BUILD="$3" PROG="$4" FROZEN_MANIFEST="$5" \
    MICROPY_FORCE_32BIT=1 MICROPY_PY_FFI=0 \
    MICROPY_SSL_AXTLS=0 MICROPY_SSL_MBEDTLS=1 MICROPY_PY_BTREE=0 STRIP=true \
    USER_C_MODULES="$board" \
    CFLAGS_EXTRA="-I$tls/include -I$board -include $board/board_port.h -Wno-pointer-arith" \
    LDFLAGS_EXTRA="-L$tls/library -Wl,--wrap=gc_collect" >>"$log" 2>&1 \
    || { tail -20 "$log" >&2; fail "the Unix port $version did not build"; }
  cp "$src/ports/unix/$3/$4" "$out/$4.part"
  local want
  want=$(echo "$version" | tr . ,)
  "$out/$4.part" -c "import sys, tls, _board
assert sys.implementation.version[:3] == ($want), sys.version
assert sys.maxsize == 2**31 - 1, 'not 32-bit'"
  # The static mbedTLS is the one linked, not a shared library that would bring HAVEGE back.
  ! ldd "$out/$4.part" 2>/dev/null | grep -q libmbed || fail "$4 links a shared mbedTLS"
  mv "$out/$4.part" "$out/$4"
  echo "unix-port: built $out/$4 (MicroPython $version, 32-bit)"
}

case $variant in
  board | standard)
    prepare_tls
    prepare 1.25.0 "$out/micropython-src"
    build 1.25.0 "$out/micropython-src" build-board micropython "$here/unix-board-manifest.py"
    ;;
  frozen)
    prepare_tls
    prepare 1.25.0 "$out/micropython-src"
    build 1.25.0 "$out/micropython-src" build-frozen micropython-frozen \
      "$here/unix-frozen-manifest.py"
    ;;
  board-1.26)
    prepare_tls
    prepare 1.26.1 "$out/micropython-1.26-src"
    build 1.26.1 "$out/micropython-1.26-src" build-board micropython-1.26 \
      "$here/unix-board-manifest.py"
    ;;
  *) fail "unknown variant $variant (board, frozen or board-1.26)" ;;
esac
