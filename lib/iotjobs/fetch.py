# The download pipeline the update handlers share (ota, bundle, delta, stream): an HTTPS GET
# with resume and renewal of an expired URL, the backoff between network failures, and the hot
# loop that takes a response block by block into the hash and an OTA slot through one
# preallocated buffer, with the offset checkpoints and progress reports between blocks.
# Imported by a handler's download step only (and unloaded with it, iotjobs.agent._forget).
# Coroutines: every wait (the network, a backoff) and every block yields to the event loop.
import asyncio

from iotjobs.agent import Failed, room
from micropython import const

_BLOCK = const(4096)
_SAVE_EVERY = const(16)  # blocks between persisted offsets (64 KB of re-download at most)
_NET_RETRIES = const(6)  # failed connections in a row before the job fails
_URL_REFRESHES = const(3)  # 403/404 in a row (expired URL) before the job fails


async def to_slot(ctx, job, slot, h, buf, tail, off, reparse):
    # The whole image over HTTPS from off into the slot: -> (size, hash). Resumes with Range
    # after a cut (from the last persisted block, ctx.state["off"]); a gzip payload (a deflate
    # stream cannot be entered part-way) starts again from zero. reparse(doc) -> job renews it.
    st = ctx.state
    size = job["size"]
    tries = [0, 0]
    while off < size:
        # MQTT closed for the download (one TLS session at a time): check in between two HTTPS
        # sessions, at every reconnect and every checkin_ms. Canceled ends it here.
        await ctx.checkin({"step": "download", "progress": "%d/%d" % (off, size)})
        await ctx.check()
        if off:
            ctx.log("resuming download at %d of %d" % (off, size))
        r = await open_url(ctx, job, off, tries, reparse)
        if r is None:
            continue
        try:
            src = r
            if job["gz"]:
                import deflate

                src = deflate.DeflateIO(r, deflate.GZIP, job["gz"])
            elif r.total != size:
                raise Failed("the server has %d bytes, the job says %d" % (r.total, size))
            off = await blocks(ctx, src, slot, h, buf, tail, off, size, job["gz"])
            if job["gz"] and src.readinto(buf, 1):
                raise Failed("the gzip payload is longer than 'size'")
            tries[0] = 0
        except OSError as e:
            off = 0 if job["gz"] else st["off"]  # the last persisted block
            h = await rehash(slot, buf, off)
            tries[0] = await net_fail(ctx, tries[0], e)
        finally:
            r.close()
    return off, h


async def rehash(slot, buf, off):
    # Resuming: hash what is already in flash instead of downloading it again (a block at a
    # time between yields to the event loop).
    import hashlib

    h = hashlib.sha256()
    for blk in range(off // _BLOCK):
        slot.readblocks(blk, buf)
        h.update(buf)
        await asyncio.sleep_ms(0)
    return h


async def open_url(ctx, job, off, tries, reparse):
    # One attempt at GET job["url"] from byte off: the response, or None to try again, after a
    # backoff (network error) or with job["url"] renewed by a describe (403/404: an expired
    # pre-signed URL; the service signs a new one on every hand-out). tries = [network
    # failures, URL refreshes] in a row, shared across attempts; Failed when they run out.
    await room()
    from iotjobs import http
    from iotjobs.board import nomem, read

    cfg = ctx.config
    ctx.tls_open()
    try:
        r = http.open(
            job["url"],
            off,
            read(cfg.get("ota_ca_file") or cfg["ca_file"]),
            cfg["timeout_ms"],
            bool(cfg.get("ota_allow_http")),
        )
    except http.HTTPError as e:
        if e.status in (403, 404) and tries[1] < _URL_REFRESHES:
            tries[1] += 1
            ctx.log("download refused (%d), asking for a new URL" % e.status)
            await ctx.sleep(1000 * tries[1])
            job.update(reparse(await ctx.refresh()))
            return None
        raise Failed("download refused: HTTP %d" % e.status)
    except (OSError, MemoryError) as e:
        if nomem(e):
            raise Failed("out of memory for the HTTPS session: %r" % (e,))
        tries[0] = await net_fail(ctx, tries[0], e)
        return None
    tries[1] = 0
    return r


async def blocks(ctx, r, slot, h, buf, tail, off, size, gz=None):
    # The hot loop: one block at a time from the response into the hash and the flash. Only
    # whole blocks are written (writeblocks erases first); the last one is padded with 0xFF.
    # A block allocates nothing (tests/test_ota_stream.py runs this under heap_lock); only the
    # offset checkpoint every _SAVE_EVERY blocks, a due progress report and ctx.tick()'s
    # periodic MQTT read do. Between two blocks it yields to the event loop (ctx.tick()), and
    # while the socket has nothing to read (ctx.io_wait(); a stall ends at timeout_ms).
    st = ctx.state
    n_since_save = 0
    while off < size:
        if not gz:
            while not r.ready():
                await ctx.io_wait()
        want = min(_BLOCK, size - off)
        if r.readinto(buf, want) != want:  # fills want bytes or raises (iotjobs.http)
            if gz:
                raise Failed("the gzip payload is shorter than 'size'")
            raise OSError(5)  # EIO: the body ended early
        if want < _BLOCK:
            for i in range(want, _BLOCK):
                buf[i] = 0xFF
            h.update(tail)
        else:
            h.update(buf)
        slot.writeblocks(off // _BLOCK, buf)
        off += want
        n_since_save += 1
        if n_since_save >= _SAVE_EVERY and off < size:
            n_since_save = 0
            st["off"] = off
            ctx.save()
        if ctx.progress_due():
            await ctx.progress({"step": "download", "progress": "%d/%d" % (off, size)}, True)
        await ctx.tick()
        if not gz and off < size and ctx.checkin_due():
            break  # the caller closes the response and checks in
    return off


async def net_fail(ctx, fails, e):
    # After a network failure: fails + 1 once the backoff is slept, or Failed when too many in
    # a row.
    fails += 1
    if fails > _NET_RETRIES:
        raise Failed("download failed %d times in a row: %r" % (fails, e))
    ms = min(1000 << fails, 30000)
    ctx.log("download: %r, retry %d in %d ms" % (e, fails, ms), "warning")
    await ctx.sleep(ctx.board.jitter(ms))
    return fails


def hexdigest(b):
    import binascii

    return binascii.hexlify(b).decode()
