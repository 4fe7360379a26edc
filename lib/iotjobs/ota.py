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

from iotjobs.agent import Rejected, _forget
from micropython import const

_BLOCK = const(4096)
_DOC_MAX_URL = const(4096)
_MAX_WBITS = const(13)  # an 8 KB window at most: a 32 KB one rarely fits a busy heap
# The fields of our own document formats (bundle; ota adds compression): any other
# name, e.g. a misspelt 'sha265', is refused by name. AWS's afr_ota documents carry fields we
# do not use; those are ignored, as AWS's own agent does.
_FIELDS = ("operation", "url", "size", "sha256", "signature", "version")
_FIELDS_OTA = _FIELDS + ("compression", "window_bits", "stream", "file_id", "allow_downgrade")


# ---------------------------------------------------------------- the job document


def _hex(s, n):
    if not isinstance(s, str) or len(s) != n:
        return None
    try:
        return bytes.fromhex(s)
    except ValueError:
        return None


def _sig_ok(sig):
    # A base64 DER ECDSA signature (at most 72 bytes), strictly: what decodes and encodes back
    # to the same text. Checked before any download, not after the whole image came in.
    import binascii

    if not 12 <= len(sig) <= 100:
        return False
    try:
        raw = binascii.a2b_base64(sig)
    except ValueError:
        return False
    return raw[0] == 0x30 and binascii.b2a_base64(raw).strip() == sig.encode()


def check(ctx, doc, slot_size, what="OTA slot"):
    # The checks a job gets before anything is written or downloaded: parse(), and plain http
    # only where the device config allows it.
    cfg = ctx.config
    job = parse(doc, slot_size, bool(cfg.get("ota_key_file")), what)
    for url in (job["url"], job["delta"]["url"] if "delta" in job else None):  # full, patch
        if url and url.startswith("http://") and not cfg.get("ota_allow_http"):
            raise Rejected("plain http:// download refused: this device allows only https://")
    return job


def parse(doc, slot_size, keyed, what="OTA slot"):
    # -> {"url", "size", "sha256" (bytes or None), "sig" (str or None), "version" (or None)}.
    # Raises Rejected with the reason: nothing is written for a document that fails here.
    if "delta" in doc:  # a patch against the running image (iotjobs.delta): + "delta" {...}
        from iotjobs import delta

        return delta.parse(doc, slot_size, keyed, what)
    afr = doc.get("afr_ota")
    if afr is None:
        known = _FIELDS_OTA if what == "OTA slot" else _FIELDS
        for k in doc:
            if k not in known:
                raise Rejected("unknown field %r" % k)
    if afr is not None:
        files = afr.get("files") if isinstance(afr, dict) else None
        if not isinstance(files, list) or len(files) != 1 or not isinstance(files[0], dict):
            raise Rejected("afr_ota: exactly one file is supported")
        protos = afr.get("protocols", ["HTTP"])
        if (
            not isinstance(protos, list)
            or not protos
            or [p for p in protos if p not in ("HTTP", "MQTT")]
        ):
            raise Rejected("afr_ota: protocols must be MQTT and/or HTTP")
        f = files[0]
        doc = {
            "url": f.get("update_data_url") if "HTTP" in protos else None,
            "size": f.get("filesize"),
            "signature": f.get("sig-sha256-ecdsa"),
        }
        if "MQTT" in protos:
            doc["stream"] = afr.get("streamname") or 0  # 0: fails the name check below
            doc["file_id"] = f.get("fileid", 0)
    stream = doc.get("stream")
    fid = doc.get("file_id", 0)
    if stream is not None:
        if not _name(stream):
            raise Rejected("'stream' must be a stream name (1-128 of [a-zA-Z0-9_-])")
        if not isinstance(fid, int) or not 0 <= fid <= 255:
            raise Rejected("'file_id' must be an integer 0-255")
        if doc.get("compression") is not None:
            raise Rejected("gzip payloads are not supported over MQTT streams")
    url = doc.get("url")
    if url is not None or stream is None:  # MQTT only needs none
        if not isinstance(url, str) or not 8 < len(url) <= _DOC_MAX_URL:
            raise Rejected("'url' must be a URL string")
        if url.startswith("${"):
            raise Rejected("the URL placeholder was not replaced by the service")
        if not url.startswith("https://") and not url.startswith("http://"):
            raise Rejected("'url' must be an https:// URL")
    size = doc.get("size")
    if not isinstance(size, int) or size <= 0:
        raise Rejected("'size' must be a positive integer")
    if size > slot_size:
        raise Rejected("image of %d bytes does not fit the %d-byte %s" % (size, slot_size, what))
    digest = None
    if "sha256" in doc:
        digest = _hex(doc["sha256"], 64)
        if digest is None:
            raise Rejected("'sha256' must be 64 hex digits")
    sig = doc.get("signature")
    if sig is not None and (not isinstance(sig, str) or not _sig_ok(sig)):
        raise Rejected("'signature' must be a base64 DER ECDSA signature")
    if keyed and sig is None:
        raise Rejected("unsigned image refused: this device requires signed firmware")
    if digest is None and not keyed:
        raise Rejected("no 'sha256' and no signing key: the image could not be verified")
    version = doc.get("version")
    if version is not None and not isinstance(version, str):
        raise Rejected("'version' must be a string")
    down = doc.get("allow_downgrade", False)
    if not isinstance(down, bool):
        raise Rejected("'allow_downgrade' must be true or false")
    gz = None
    comp = doc.get("compression")
    if comp is not None:
        if comp != "gzip":
            raise Rejected("'compression' must be \"gzip\"")
        gz = doc.get("window_bits")
        if not isinstance(gz, int) or not 9 <= gz <= _MAX_WBITS:
            # The decompressor keeps a window of 2**window_bits bytes: the document states it
            # so that the device can refuse what it cannot afford before downloading.
            raise Rejected("gzip needs 'window_bits' 9-%d" % _MAX_WBITS)
    return {
        "url": url,
        "size": size,
        "sha256": digest,
        "sig": sig,
        "version": version,
        "gz": gz,
        "stream": stream,
        "fileid": fid,
        "down": down,
    }


def _name(s):
    if not isinstance(s, str) or not 0 < len(s) <= 128:
        return False
    for c in s:
        if not (c.isalpha() and c < "\x80" or "0" <= c <= "9" or c in "_-"):
            return False
    return True


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
    slot = ctx.board.update_slot()
    job = check(ctx, doc, slot.size)
    st["step"] = "download"
    if "delta" in job:
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
    from iotjobs import fetch

    st = ctx.state
    b = ctx.board
    slot = _slot(ctx)
    limit, keyed = slot.size, bool(ctx.config.get("ota_key_file"))
    job = parse(doc, limit, keyed)
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
    from iotjobs import delta

    return await delta.step(ctx, doc)
