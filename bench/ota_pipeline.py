# The device's OTA pipeline without the job around it: HTTPS GET -> SHA-256 -> flash (the
# simulated esp32.Partition), block by block, as iotjobs.ota does it. Run by jobsctl.bench under
# the Unix port with a simulated board folder as the current directory.
#   micropython ota_pipeline.py URL CA_FILE
# prints: OK <bytes> <ms> <sha256> <heap_before_open> <heap_after_open> <heap_end>
# The whole-block loop runs under micropython.heap_lock(): a MemoryError there means the loop
# allocated. gc.mem_alloc() after a collect gives the live heap at each point.
import gc
import hashlib
import sys
import time

import esp32
import micropython
from iotjobs import http


def main(url, ca):
    esp32._power_on()
    slot = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    with open(ca, "rb") as f:
        cadata = f.read()
    buf = bytearray(4096)
    h = hashlib.sha256()
    gc.collect()
    before = gc.mem_alloc()
    t0 = time.ticks_ms()
    r = http.open(url, 0, cadata, 15000, False)
    slot.writeblocks(0, buf)  # the first write opens the slot (the sim's only allocation)
    gc.collect()
    opened = gc.mem_alloc()
    left = r.length
    blk = 0
    micropython.heap_lock()
    try:
        while left >= 4096:
            r.readinto(buf)
            h.update(buf)
            slot.writeblocks(blk, buf)
            blk += 1
            left -= 4096
    finally:
        micropython.heap_unlock()
    if left:
        r.readinto(buf, left)
        h.update(memoryview(buf)[:left])
        for i in range(left, 4096):
            buf[i] = 0xFF
        slot.writeblocks(blk, buf)
    r.close()
    ms = time.ticks_diff(time.ticks_ms(), t0)
    gc.collect()
    return "OK %d %d %s %d %d %d" % (r.length, ms, h.digest().hex(), before, opened, gc.mem_alloc())


try:
    print(main(sys.argv[1], sys.argv[2]))
except Exception as e:
    print("ERR", type(e).__name__, e.args)
