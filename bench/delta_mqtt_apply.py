# The device's delta decoder fed by an MQTT stream, without the job around it: the agent's real
# MQTT session (config.json of a simulated board), the patch as a file of a stream asked for in
# 1 KB blocks (iotjobs.stream.Blocks), each block decoded straight into the decoder's read
# buffer, the base from ota_0, the new image into ota_1 (iotjobs.delta.Patcher), with the agent's
# own Context. Used by tests/test_delta_mqtt.py (pins that a block allocates nothing). Run under
# the Unix port with a provisioned simulated board folder as the current directory:
#   micropython delta_mqtt_apply.py STREAM FILE_ID PATCH_SIZE BASE_SIZE NEW_SIZE FORMAT WINDOW
#       [unlocked]
# (WINDOW: the patch's heatshrink window in bytes, 0 for none)
# prints: OK <ms> <sha256 of the new image> <sha256 of the patch> <heap_before> <heap_ready>
#            <heap_end> <checkpoints> <reports> <mqtt_reads> <requests> <blocks>
#     or: ERR <exception name> <args>
# The apply runs under micropython.heap_lock() (unless `unlocked`). What it does once per window
# of blocks (the GetStream request's publish) or now and then (the agent's MQTT poll, a due
# progress report, a checkpoint) reaches ota_heaplock.py, which unlocks the heap for it and
# counts it;
# everything a block does (the packet read, JSON/base64 or CBOR decode into the decoder's
# buffer, decoding, SHA-256, flash reads and writes) runs locked.
import asyncio
import gc
import hashlib
import sys
import time

import esp32
from iotjobs import app, config, stream
from iotjobs.context import Context
from iotjobs.delta import Patcher
from ota_heaplock import calls, locked, run, wrap


def main(name, fid, psize, base_size, size, fmt, window, lock):
    locked[0] = lock
    esp32._power_on()
    cfg = config.load()
    cfg["ota_stream_format"] = fmt
    cfg["progress_interval_ms"] = 3600000
    a = app.build(cfg)
    asyncio.run(a.link.ensure())
    wrap(a)
    # By label: the base need not be a bootable image here.
    base, out = esp32.Partition("ota_0"), esp32.Partition("ota_1")
    ctx = Context(a, "bench-job", "ota", {}, False)
    asyncio.run(ctx.progress({"step": "delta", "progress": "0"}, True))  # as a job starts
    s = stream.Session(ctx, {"stream": name, "fileid": fid}, 1024)
    ob = bytearray(4096)
    out.writeblocks(0, ob)  # the simulated slot opens its files on first use (Unix only)
    base.readblocks(0, ob)
    p = Patcher(base, out, base_size, size, psize, ob)
    p.win = bytearray(window)  # as run() makes it, but before the lock
    p.every = 0  # no checkpoints: they persist the state (allocating), as the agent does
    hp, ho = hashlib.sha256(), hashlib.sha256()
    gc.collect()
    before = gc.mem_alloc()
    t0 = time.ticks_ms()
    asyncio.run(s.link())  # subscribes, makes the packet reader: once per connection
    asyncio.run(ctx.check())
    src = p.ticker = stream.Blocks(s, psize, 0, p.inb)
    c = p.run(src, hp, ho, ctx)
    gc.collect()
    ready = gc.mem_alloc()
    asyncio.run(run(c))
    ms = time.ticks_diff(time.ticks_ms(), t0)
    gc.collect()
    k = calls
    return "OK %d %s %s %d %d %d %d %d %d %d %d" % (
        ms,
        ho.digest().hex(),
        hp.digest().hex(),
        before,
        ready,
        gc.mem_alloc(),
        k[0],
        k[1],
        k[2],
        k[3],
        s.blocks,
    )


try:
    a = sys.argv
    print(
        main(
            a[1],
            int(a[2]),
            int(a[3]),
            int(a[4]),
            int(a[5]),
            a[6],
            int(a[7]),
            len(a) < 9,
        )
    )
except Exception as e:
    sys.print_exception(e, sys.stderr)
    print("ERR", type(e).__name__, e.args)
