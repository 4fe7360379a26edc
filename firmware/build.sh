#!/usr/bin/env bash
# `make firmware`: a MicroPython 1.25.0 ESP32 firmware (ESP32_GENERIC, OTA variant: ota_0/ota_1)
# with lib/iotjobs frozen in (firmware/manifest.py). Needs ESP-IDF (idf.py on PATH, after
# `. $IDF_PATH/export.sh`); without it, prints one line saying what is missing and exits 2.
#
#   BOARD=ESP32_GENERIC BOARD_VARIANT=OTA MPY_DIR=<micropython v1.25.0 checkout> make firmware
#
# MPY_DIR defaults to build/micropython-src, cloned (tag v1.25.0) when missing.
# Output: build/firmware/<BOARD>-<VARIANT>.bin (flash with `make flash`) and .app-bin (OTA payload).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
BOARD=${BOARD:-ESP32_GENERIC}
BOARD_VARIANT=${BOARD_VARIANT:-OTA}
MPY_TAG=v1.25.0
MPY_DIR=${MPY_DIR:-$ROOT/build/micropython-src}
OUT=$ROOT/build/firmware

if ! command -v idf.py >/dev/null 2>&1; then
  echo "firmware: ESP-IDF is missing (no idf.py on PATH): install ESP-IDF v5.2.x and run '. \$IDF_PATH/export.sh', then 'make firmware' again" >&2
  exit 2
fi
if [ ! -d "$MPY_DIR/ports/esp32" ]; then
  if ! command -v git >/dev/null 2>&1; then
    echo "firmware: git is missing: needed to fetch MicroPython $MPY_TAG into $MPY_DIR (or set MPY_DIR)" >&2
    exit 2
  fi
  echo "firmware: fetching MicroPython $MPY_TAG into $MPY_DIR"
  git clone --quiet --depth 1 --branch "$MPY_TAG" https://github.com/micropython/micropython.git "$MPY_DIR"
fi

BUILD_DIR=build-$BOARD-$BOARD_VARIANT-iotjobs
make -C "$MPY_DIR/mpy-cross" -j"$(nproc)"
make -C "$MPY_DIR/ports/esp32" BOARD="$BOARD" BOARD_VARIANT="$BOARD_VARIANT" submodules
make -C "$MPY_DIR/ports/esp32" -j"$(nproc)" BOARD="$BOARD" BOARD_VARIANT="$BOARD_VARIANT" \
  BUILD="$BUILD_DIR" FROZEN_MANIFEST="$HERE/manifest.py"

mkdir -p "$OUT"
cp "$MPY_DIR/ports/esp32/$BUILD_DIR/firmware.bin" "$OUT/$BOARD-$BOARD_VARIANT.bin"
cp "$MPY_DIR/ports/esp32/$BUILD_DIR/micropython.bin" "$OUT/$BOARD-$BOARD_VARIANT.app-bin"
# The same checks `make flash` applies (OTA partition table, valid images), without a board.
"$ROOT/.venv/bin/jobsctl" flash --port /dev/null --firmware "$OUT/$BOARD-$BOARD_VARIANT.bin" --dry-run >/dev/null
echo "firmware: $OUT/$BOARD-$BOARD_VARIANT.bin (flash: make flash PORT=... FIRMWARE=$OUT/$BOARD-$BOARD_VARIANT.bin)"
echo "firmware: $OUT/$BOARD-$BOARD_VARIANT.app-bin (the OTA payload for jobsctl image/ota)"
