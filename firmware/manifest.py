# Custom ESP32 firmware: MicroPython's own ESP32 manifest plus the agent frozen in.
#   make -C $MPY_DIR/ports/esp32 BOARD=ESP32_GENERIC BOARD_VARIANT=OTA \
#        FROZEN_MANIFEST=$PWD/firmware/manifest.py
# (firmware/build.sh does this; `make firmware`). Relative paths are relative to this file.

# Everything the port freezes by default (asyncio, networking bundle, ntptime, ...).
include("$(PORT_DIR)/boards/manifest.py")

# The MQTT client the agent's transport is written against (frozen by default since 1.25;
# requiring it again is harmless and keeps older ports working).
require("umqtt.simple")

# The device library: lib/iotjobs/** becomes frozen bytecode, importable as iotjobs.*.
# Frozen modules come before /lib on sys.path: deploy such a board with
# `jobsctl deploy --no-lib` (boot.py, main.py and the device bundle only).
package("iotjobs", base_path="../lib")
