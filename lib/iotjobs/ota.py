# OTA firmware update: stream the image from a pre-signed URL into the next OTA slot, verify it
# (size, SHA-256, ECDSA P-256 signature), boot it, self-test, confirm or roll back, and report
# the result after the reboot.
#
# Native job document (see the README):
#   {"operation": "ota", "url": "${aws:iot:s3-presigned-url:https://...}", "size": 1048576,
#    "sha256": "<64 hex>", "signature": "<base64 DER ECDSA over SHA-256 of the image>",
#    "version": "1.1.0"}
# AWS's FreeRTOS OTA document (`aws iot create-ota-update`, HTTP protocol) is understood too:
#   {"afr_ota": {"protocols": ["HTTP"], "files": [{"filesize": N, "update_data_url": "...",
#    "sig-sha256-ecdsa": "<base64 DER>", ...}]}}
#
# The handler is a table of steps; the current step and the download offset are persisted
# (ctx.save) so that a reset at any point continues from there, and the boot slot is only
# switched (set_boot) after the whole image has been verified.
import asyncio
import sys

from iotjobs.agent import _forget, room, unload
from micropython import const

_BLOCK = const(4096)
# The document's checks are iotjobs.otadoc's, loaded for each call only (parse, check): a
# download runs without their code and messages in the heap.


def _hex(s, n):
    if not isinstance(s, str) or len(s) != n:
        return None
    try:
        return bytes.fromhex(s)
    except ValueError:
        return None


def check(ctx, doc, slot_size, what="OTA slot"):
    return _doc("check", ctx, doc, slot_size, what)


def parse(doc, slot_size, keyed, what="OTA slot"):
    return _doc("parse", doc, slot_size, keyed, what)


async def acheck(ctx, doc, slot_size, what="OTA slot"):
    # check() and parse() as a handler calls them: the checks' import in a stretch of its own
    # first (checks()). The plain ones serve a URL's renewal (reparse) and nested checks.
    await checks()
    return check(ctx, doc, slot_size, what)


async def aparse(doc, slot_size, keyed, what="OTA slot"):
    await checks()
    return parse(doc, slot_size, keyed, what)


async def checks():
    # The checks' import (their code and, its first time in a boot, their names) in a stretch
    # of its own, apart from the checks themselves; the call after it unloads them as ever.
    await room()
    from iotjobs import otadoc  # noqa: F401

    await asyncio.sleep_ms(0)


_depth = 0  # parse()/check() calls under way (a delta document's checks call parse() again)


def _doc(fn, *args):
    # The checks' code is unloaded when the outermost call returns.
    global _depth
    from iotjobs import otadoc

    _depth += 1
    try:
        return getattr(otadoc, fn)(*args)
    finally:
        _depth -= 1
        if not _depth:
            unload(("iotjobs.otadoc",))


# ---------------------------------------------------------------- the handler


async def handle(ctx, doc):
    if "step" not in ctx.state:
        # The checks' code (iotjobs.slot, a delta's base check) and objects go before the
        # first step, like a step's (run).
        mods = list(sys.modules)
        await _begin(ctx, doc)
        await asyncio.sleep_ms(0)  # the checks and the save, the GC pass, the first step: apart
        _forget(mods)
        await asyncio.sleep_ms(0)
    return await run(ctx, doc, _step)


async def _begin(ctx, doc):
    st = ctx.state
    await room()  # before the slot's import
    slot = ctx.board.update_slot()
    job = await acheck(ctx, doc, slot.size)
    st["step"] = "download"
    if "delta" in job:
        await room()
        from iotjobs import delta

        await delta.check_base(ctx, job["delta"])  # REJECTED for another base, before downloading
        st["step"] = "delta"
    st["slot"] = slot.label
    st["off"] = 0
    st["old"] = ctx.board.firmware_version()
    await asyncio.sleep_ms(0)  # the checks apart from the save
    ctx.save()


async def run(ctx, doc, step):
    # The update handlers' step runner (ota, bundle): await step(ctx, doc, name) runs the persisted
    # step ctx.state["step"] and returns the next one's name (saved before it runs: a reset
    # anywhere continues from there) or the job's details (a dict).
    st = ctx.state
    while True:
        name = st["step"]
        ctx.log("step " + name)  # the console's record of where a job got to
        mods = list(sys.modules)
        result = await step(ctx, doc, name)
        # What the step imported (the HTTP client, ECDSA) goes with its frame, before the
        # next step connects MQTT again. The step's end, the GC pass and the save: apart.
        await asyncio.sleep_ms(0)
        _forget(mods)
        await asyncio.sleep_ms(0)
        if isinstance(result, dict):
            return result
        st["step"] = result
        ctx.save()
        await ctx.tick()  # the next step does not start in the same stretch as this save


async def _step(ctx, doc, step):
    try:
        if step == "download":
            return await _download(ctx, doc)
        if step == "delta":
            return await _delta(ctx, doc)
        # The steps after the download are iotjobs.otaboot's, imported when reached (and
        # unloaded after, run()): the download runs without their code in the heap.
        await room()
        fn = getattr(__import__("iotjobs.otaboot", None, None, [step]), step)
        await asyncio.sleep_ms(0)  # the import apart from the step
        return await fn(ctx, doc)
    except Exception:
        if step in ("download", "verify", "delta"):
            _erase_head(ctx)  # leave no partial image behind
        raise


def _slot(ctx):
    return ctx.board.update_slot(ctx.state["slot"])


async def _download(ctx, doc):
    await room()
    from iotjobs import fetch

    st = ctx.state
    b = ctx.board
    slot = _slot(ctx)
    limit, keyed = slot.size, bool(ctx.config.get("ota_key_file"))
    job = await aparse(doc, limit, keyed)
    size = job["size"]
    buf = bytearray(_BLOCK)
    tail = memoryview(buf)[: size % _BLOCK]  # the last, partial block's bytes (if any)
    await asyncio.sleep_ms(0)  # the imports, the checks and the buffer apart from the download
    # A deflate stream cannot be entered part-way: a gzip download starts again from zero.
    off = 0 if job["gz"] else st["off"]
    h = await fetch.rehash(slot, buf, off)
    reparse = lambda d: parse(d, limit, keyed)  # noqa: E731
    if job["stream"] is None:
        off, h = await fetch.to_slot(ctx, job, slot, h, buf, tail, off, reparse)
    else:  # MQTT streams, or both (by preference, with a fallback)
        await room()
        from iotjobs import stream

        off, h = await stream.either(ctx, job, slot, h, buf, tail, off, reparse)
    st["off"] = size
    st["sha256"] = fetch.hexdigest(h.digest())
    del buf, tail  # the block buffer is free before verify needs the heap
    b.feed()
    return "verify"


def _erase_head(ctx):
    _slot(ctx).erase()


async def _delta(ctx, doc):
    await room()
    from iotjobs import delta

    return await delta.step(ctx, doc)
