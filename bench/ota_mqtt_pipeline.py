# The device's OTA download over MQTT streams without the job around it: the agent's real MQTT
# session (config.json of a simulated board), GetStream windows -> decode -> SHA-256 -> flash,
# run by iotjobs.stream.fetch with the agent's own Context. Used by `make bench` (figures) and
# tests/test_ota_mqtt_stream.py (pins that a block allocates nothing). Run under the Unix port
# with a provisioned simulated board folder as the current directory:
#   micropython ota_mqtt_pipeline.py STREAM SIZE FORMAT [PROGRESS_INTERVAL_MS [unlocked]]
# prints: OK <bytes> <ms> <sha256> <heap_before> <heap_ready> <heap_end>
#            <checkpoints> <reports> <mqtt_reads> <requests> <blocks>
#     or: ERR <exception name> <args>
# The loop runs under micropython.heap_lock() (unless `unlocked`). What it does only once per
# window of blocks (the GetStream request's publish, the agent's MQTT poll) or now and then
# (the offset checkpoint, a due progress report) reaches ota_heaplock.py, which unlocks the heap for
# it and counts it; everything a block does runs locked. The loop is an asyncio task that
# yields between blocks, as on a board; the coroutine of each window is made unlocked
# (counted with the requests: one per window).
import asyncio
import gc
import hashlib
import sys
import time

import esp32
from iotjobs import app, config, stream
from iotjobs.context import Context
from ota_heaplock import calls, locked, run, wrap


def main(name, size, fmt, interval_ms, lock):
    locked[0] = lock
    esp32._power_on()
    cfg = config.load()
    cfg["ota_stream_format"] = fmt
    cfg["progress_interval_ms"] = interval_ms
    a = app.build(cfg)
    asyncio.run(a.link.ensure())
    wrap(a, True)
    slot = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    state = {"off": 0}
    ctx = Context(a, "bench-job", "afr_ota", state, False)
    asyncio.run(ctx.progress({"step": "download", "progress": "0"}, True))  # as a job starts
    s = stream.Session(ctx, {"stream": name, "fileid": 0})
    buf = bytearray(4096)
    tail = memoryview(buf)[: size % 4096]
    h = hashlib.sha256()
    slot.writeblocks(0, buf)  # the simulated slot opens its file on the first write (Unix only)
    gc.collect()
    before = gc.mem_alloc()
    t0 = time.ticks_ms()
    asyncio.run(s.link())  # subscribes, makes the packet reader: once per connection
    asyncio.run(ctx.check())
    gc.collect()
    ready = gc.mem_alloc()
    off = asyncio.run(run(stream.fetch(ctx, s, slot, h, buf, tail, 0, size)))
    ms = time.ticks_diff(time.ticks_ms(), t0)
    gc.collect()
    c = calls
    return "OK %d %d %s %d %d %d %d %d %d %d %d" % (
        off,
        ms,
        h.digest().hex(),
        before,
        ready,
        gc.mem_alloc(),
        c[0],
        c[1],
        c[2],
        c[3],
        s.blocks,
    )


try:
    a = sys.argv
    print(
        main(
            a[1],
            int(a[2]),
            a[3],
            int(a[4]) if len(a) > 4 else 3600000,
            len(a) < 6,
        )
    )
except Exception as e:
    sys.print_exception(e, sys.stderr)
    print("ERR", type(e).__name__, e.args)
