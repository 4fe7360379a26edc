# The Unix port with the device code frozen in, as firmware/manifest.py freezes it into a custom
# ESP32 firmware: bytecode and strings stay in the binary instead of the heap, so heap figures
# measured with build/micropython-frozen are what a board with that firmware has left.
# firmware/unix-port.sh builds it; relative paths are relative to this file.
include("$(MPY_DIR)/extmod/asyncio")

# Frozen into official ESP32 firmware since 1.25 (fetched, pinned and unmodified, into build/).
package("umqtt", base_path="../build/upylib")

# The device library.
package("iotjobs", base_path="../lib")

# The stand-ins for what is built into the firmware (esp32, machine, network, ntptime and the
# ssl shim): on a board they cost no heap to import either.
for name in ("esp32", "esp32nvs", "machine", "network", "ntptime", "ssl", "ussl"):
    module(name + ".py", base_path="../sim")
