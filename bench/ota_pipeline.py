# The device's OTA pipeline without the job around it: HTTPS GET -> SHA-256 -> flash (the
# simulated esp32.Partition), run by the OTA handler's own loop (iotjobs.fetch.blocks) with the
# agent's own Context. Used by `make bench` (figures) and tests/test_ota_stream.py (pins that a
# block allocates nothing). Run under the Unix port with a simulated board folder as the
# current directory:
#   micropython ota_pipeline.py URL CA_FILE [PROGRESS_INTERVAL_MS [unlocked] [sample]]
# prints: OK <bytes> <ms> <sha256> <heap_before_open> <heap_after_open> <heap_end>
#            <checkpoints> <reports> <mqtt_reads> <offset_persisted_last> <imports>
#            <heap_during>
#     or: ERR <exception name> <args>
# The loop runs as an asyncio task under micropython.heap_lock() (unless `unlocked`), yielding
# to the event loop between blocks as on a board: a MemoryError there means a block (or the
# loop's scheduling of it) allocated. What the loop does only now and then (the offset
# checkpoint, a due progress report, ctx.tick()'s MQTT read) reaches the stand-in agent below,
# which unlocks the heap for it and counts it. <imports>: the imports the loop ran
# (builtins.__import__ counts them while the loop runs; heap_lock does not catch one:
# importing a built-in allocates nothing, it only searches the filesystem path, a littlefs
# lookup per call on a board); must be 0.
# The default progress interval (an hour) keeps reports, which build their
# details and so allocate, out of a locked run. gc.mem_alloc() after a collect gives the live
# heap at each point; with `sample`, each checkpoint also collects and reads it, so
# <heap_during> is the live heap's high-water while the loop runs (0 without `sample`).
import asyncio
import builtins
import gc
import hashlib
import sys
import time

import esp32
import micropython
from iotjobs import fetch, http
from iotjobs.board import Board
from iotjobs.context import Context

_imports = [0, None]  # how many, the last name
_import = builtins.__import__


def _counting_import(name, g=None, lo=None, fromlist=None, level=0):
    _imports[0] += 1
    _imports[1] = name
    return _import(name, g, lo, fromlist, level)


class _Agent:
    # The agent's side of a running job's Context; each call is one of the loop's periodic,
    # allowed allocations and runs with the heap unlocked.
    def __init__(self, interval_ms, locked, sample=False):
        self.thing = "bench"
        self.board = Board()
        self.link = None
        self.cfg = {"progress_interval_ms": interval_ms}
        self.stale = False
        self.calls = [0, 0, 0]  # persist, report, pump
        self.locked = locked
        self.sample = sample
        self.peak = 0

    def _count(self, i):
        if self.locked:
            micropython.heap_unlock()
        self.calls[i] += 1
        if self.sample:  # the live heap now, in the middle of the loop
            gc.collect()
            self.peak = max(self.peak, gc.mem_alloc())
        if self.locked:
            micropython.heap_lock()

    def persist(self):
        self._count(0)

    async def report(self, status, details):
        self._count(1)

    def pump(self):
        self._count(2)
        return True

    async def poll(self):
        self._count(2)

    def log(self, level, msg):
        pass


async def _run(c, locked):
    # The loop's coroutine c, awaited with the heap locked (the task around it exists already).
    await asyncio.sleep_ms(0)  # the scheduler's poller makes its result tuple once, now
    if locked:
        micropython.heap_lock()
    try:
        return await c
    finally:
        if locked:
            micropython.heap_unlock()


def main(url, ca, interval_ms, locked, sample):
    esp32._power_on()
    slot = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    with open(ca, "rb") as f:
        cadata = f.read()
    agent = _Agent(interval_ms, locked, sample)
    state = {"off": 0}
    ctx = Context(agent, "bench-job", "ota", state, False)
    asyncio.run(ctx.progress({"step": "download", "progress": "0"}, True))  # as a job starts
    buf = bytearray(4096)
    h = hashlib.sha256()
    gc.collect()
    before = gc.mem_alloc()
    t0 = time.ticks_ms()
    r = http.open(url, 0, cadata, 15000, False)
    tail = memoryview(buf)[: r.total % 4096]
    slot.writeblocks(0, buf)  # the simulated slot opens its file on the first write (Unix only)
    gc.collect()
    opened = gc.mem_alloc()
    c = fetch.blocks(ctx, r, slot, h, buf, tail, 0, r.total)
    task = _run(c, locked)
    builtins.__import__ = _counting_import
    try:
        off = asyncio.run(task)
    finally:
        builtins.__import__ = _import
        r.close()
    ms = time.ticks_diff(time.ticks_ms(), t0)
    gc.collect()
    c = agent.calls
    return "OK %d %d %s %d %d %d %d %d %d %d %d %d" % (
        off,
        ms,
        h.digest().hex(),
        before,
        opened,
        gc.mem_alloc(),
        c[0],
        c[1],
        c[2],
        state["off"],
        _imports[0],
        agent.peak,
    )


try:
    a = sys.argv
    flags = a[4:]
    interval = int(a[3]) if len(a) > 3 else 3600000
    print(main(a[1], a[2], interval, "unlocked" not in flags, "sample" in flags))
except Exception as e:
    print("ERR", type(e).__name__, e.args)
