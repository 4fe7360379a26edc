# The custom-firmware board: the stock-firmware board (unix-board-manifest.py) with the device
# library frozen in too, as firmware/manifest.py freezes it into a custom ESP32 firmware:
# bytecode and strings stay in the binary instead of the heap. firmware/unix-port.sh builds it
# into build/micropython-frozen; relative paths are relative to this file.
include("unix-board-manifest.py")

# The device library.
package("iotjobs", base_path="../lib")
