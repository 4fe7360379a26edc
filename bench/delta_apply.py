# The device's delta decoder without the job around it: a detools patch from a file, the base
# from ota_0 (the running slot), the new image into the next slot (simulated esp32.Partition), by
# iotjobs.delta.Patcher. Used by `make bench` (apply time, heap) and tests/test_delta.py
# (pins that applying allocates nothing). Run under the Unix port in a simulated board folder:
#   micropython delta_apply.py PATCH BASE_SIZE NEW_SIZE [unlocked]
# prints: OK <ms> <sha256 of the new image> <heap_before> <heap_with_buffers> <heap_end>
#            <checks> <patch sha256>
#     or: ERR <exception name> <args>
# The whole apply runs under micropython.heap_lock() (unless `unlocked`): a MemoryError there
# means something allocated; the heap at lock time is then the high-water mark.
import asyncio
import gc
import hashlib
import os
import sys
import time

import esp32
import micropython
from iotjobs.delta import Patcher


class _File:
    # The HTTP response's readinto(buf, n) over a file (n is always len(buf) here).
    def __init__(self, f):
        self.f = f

    def readinto(self, buf, n):
        return self.f.readinto(buf)


class _Ctx:
    def __init__(self):
        self.checks = 0

    def progress_due(self):
        return False

    def tick(self):
        self.checks += 1
        return asyncio.sleep_ms(0)


async def _run(c, locked):
    await asyncio.sleep_ms(0)  # the scheduler's poller makes its result tuple once, now
    if locked:
        micropython.heap_lock()
    try:
        return await c
    finally:
        if locked:
            micropython.heap_unlock()


def _window(path):
    # The heatshrink window the patch names (header byte, new size, then the heatshrink byte).
    with open(path, "rb") as f:
        h = f.read(12)
    if h[0] & 15 != 4:
        return 0
    i = 1
    while h[i] & 0x80:
        i += 1
    return 1 << ((h[i + 1] >> 4) + 4)


def main(path, base_size, size, locked):
    # By label: the base need not be a bootable image here (the bench patches port binaries).
    base, out = esp32.Partition("ota_0"), esp32.Partition("ota_1")
    psize = os.stat(path)[6]
    ctx = _Ctx()
    gc.collect()
    before = gc.mem_alloc()
    ob = bytearray(4096)
    out.writeblocks(0, ob)  # the simulated slot opens its files on first use (Unix only)
    base.readblocks(0, ob)
    p = Patcher(base, out, base_size, size, psize, ob)
    f = open(path, "rb")
    src = _File(f)
    hp, ho = hashlib.sha256(), hashlib.sha256()
    p.win = bytearray(_window(path))  # as run() makes it, but before the lock
    p.every = 0  # no checkpoints: they persist the state (allocating), as the agent does
    gc.collect()
    ready = gc.mem_alloc()
    t0 = time.ticks_ms()
    try:
        asyncio.run(_run(p.run(src, hp, ho, ctx), locked))
    finally:
        f.close()
    ms = time.ticks_diff(time.ticks_ms(), t0)
    gc.collect()
    return "OK %d %s %d %d %d %d %s" % (
        ms,
        ho.digest().hex(),
        before,
        ready,
        gc.mem_alloc(),
        ctx.checks,
        hp.digest().hex(),
    )


try:
    a = sys.argv
    print(main(a[1], int(a[2]), int(a[3]), len(a) < 5))
except Exception as e:
    print("ERR", type(e).__name__, e.args)
