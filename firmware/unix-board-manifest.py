# The stock-firmware board: what official ESP32 firmware has built in or frozen, frozen into the
# Unix port (build/micropython), so that only the device library is loaded into the heap, as
# `make deploy` puts it on a board (.mpy files in /lib). firmware/unix-port.sh builds it;
# relative paths are relative to this file.
include("$(MPY_DIR)/extmod/asyncio")

# Frozen into official ESP32 firmware since 1.25 (fetched, pinned and unmodified, into build/).
package("umqtt", base_path="../build/upylib")

# The stand-ins for what is built into the firmware (esp32.NVS's store, ntptime and the ssl
# shim); esp32, machine and network are C modules of the port (firmware/board/_board/hw.c), as
# on a board.
for name in ("esp32nvs", "ntptime", "ssl", "ussl"):
    module(name + ".py", base_path="../sim")
