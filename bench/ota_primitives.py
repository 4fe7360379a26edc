# The OTA loop's own primitives, each alone over the same image, for `make bench` to set the
# loop (bench/ota_pipeline.py) against: TLS readinto of the whole HTTPS body into one 4 KB
# buffer, SHA-256 of as many 4 KB blocks, and as many slot writes (the simulated
# esp32.Partition). Run under the Unix port with a simulated board folder as the current
# directory:
#   micropython ota_primitives.py URL CA_FILE
# prints: OK <bytes> <read_ms> <sha256_ms> <write_ms>
#     or: ERR <exception name> <args>
import hashlib
import sys
import time

import esp32
from iotjobs import http

_BLOCK = 4096


def main(url, ca):
    esp32._power_on()
    slot = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    with open(ca, "rb") as f:
        cadata = f.read()
    buf = bytearray(_BLOCK)
    slot.writeblocks(0, buf)  # the simulated slot opens its file on the first write
    t0 = time.ticks_ms()
    r = http.open(url, 0, cadata, 15000, False)
    size = r.total
    off = 0
    while off < size:
        want = min(_BLOCK, size - off)
        r.readinto(buf, want)
        off += want
    r.close()
    read_ms = time.ticks_diff(time.ticks_ms(), t0)
    blocks = (size + _BLOCK - 1) // _BLOCK
    h = hashlib.sha256()
    t0 = time.ticks_ms()
    i = 0
    while i < blocks:
        h.update(buf)
        i += 1
    sha_ms = time.ticks_diff(time.ticks_ms(), t0)
    t0 = time.ticks_ms()
    i = 0
    while i < blocks:
        slot.writeblocks(i, buf)
        i += 1
    write_ms = time.ticks_diff(time.ticks_ms(), t0)
    return "OK %d %d %d %d" % (off, read_ms, sha_ms, write_ms)


try:
    print(main(sys.argv[1], sys.argv[2]))
except Exception as e:
    print("ERR", type(e).__name__, e.args)
