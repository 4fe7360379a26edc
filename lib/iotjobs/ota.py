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
import sys

from iotjobs.agent import Failed, Rejected, _forget
from micropython import const

_BLOCK = const(4096)
_SAVE_EVERY = const(16)  # blocks between persisted offsets (64 KB of re-download at most)
_NET_RETRIES = const(6)  # failed connections in a row before the job fails
_URL_REFRESHES = const(3)  # 403/404 in a row (expired URL) before the job fails
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


def handle(ctx, doc):
    st = ctx.state
    if "step" not in st:
        slot = ctx.board.update_slot()
        job = check(ctx, doc, slot.size)
        st["step"] = "download"
        if "delta" in job:
            from iotjobs import delta

            delta.check_base(ctx, job["delta"])  # REJECTED for another base, before downloading
            st["step"] = "delta"
        st["slot"] = slot.label
        st["off"] = 0
        st["old"] = ctx.board.firmware_version()
        ctx.save()
    while True:
        step = st["step"]
        ctx.log("step " + step)  # the console's record of where a job got to
        mods = list(sys.modules)
        try:
            # The steps after the download are iotjobs.otaboot's, imported when reached (and
            # unloaded after, below): the download runs without their code in the heap.
            if step == "download":
                result = _download(ctx, doc)
            elif step == "delta":
                result = _delta(ctx, doc)
            else:
                result = getattr(__import__("iotjobs.otaboot", None, None, [step]), step)(ctx, doc)
        except Exception:
            if step in ("download", "verify", "delta"):
                _erase_head(ctx)  # leave no partial image behind
            raise
        # What the step imported (the HTTP client, ECDSA) goes with its frame, before the
        # next step connects MQTT again.
        _forget(mods)
        if isinstance(result, dict):
            return result
        st["step"] = result
        ctx.save()


def _slot(ctx):
    return ctx.board.update_slot(ctx.state["slot"])


def _download(ctx, doc):
    st = ctx.state
    b = ctx.board
    slot = _slot(ctx)
    limit, keyed = slot.size, bool(ctx.config.get("ota_key_file"))
    job = parse(doc, limit, keyed)
    size = job["size"]
    buf = bytearray(_BLOCK)
    tail = memoryview(buf)[: size % _BLOCK]  # the last, partial block's bytes (if any)
    # A deflate stream cannot be entered part-way: a gzip download starts again from zero.
    off = 0 if job["gz"] else st["off"]
    h = _rehash(slot, buf, off)
    if job["stream"] is None:
        off, h = _http(ctx, job, slot, h, buf, tail, off, limit, keyed)
    else:  # MQTT streams, or both (by preference, with a fallback)
        from iotjobs import stream

        off, h = stream.either(ctx, job, slot, h, buf, tail, off, limit, keyed)
    st["off"] = size
    digest = h.digest()
    st["sha256"] = _tohex(digest)
    del buf, tail  # the block buffer is free before verify needs the heap
    b.feed()
    return "verify"


def _http(ctx, job, slot, h, buf, tail, off, limit, keyed):
    # The whole image over HTTPS from off: -> (size, hash). Resumes with Range after a cut.
    st = ctx.state
    size = job["size"]
    tries = [0, 0]
    while off < size:
        # MQTT closed for the download (one TLS session at a time): check in between two HTTPS
        # sessions, at every reconnect and every checkin_ms. Canceled ends it here.
        ctx.checkin({"step": "download", "progress": "%d/%d" % (off, size)})
        ctx.check()
        if off:
            ctx.log("resuming download at %d of %d" % (off, size))
        r = open_url(ctx, job, off, tries, lambda d: parse(d, limit, keyed))
        if r is None:
            continue
        try:
            src = r
            if job["gz"]:
                import deflate

                src = deflate.DeflateIO(r, deflate.GZIP, job["gz"])
            elif r.total != size:
                raise Failed("the server has %d bytes, the job says %d" % (r.total, size))
            off = _stream(ctx, src, slot, h, buf, tail, off, size, job["gz"])
            if job["gz"] and src.readinto(buf, 1):
                raise Failed("the gzip payload is longer than 'size'")
            tries[0] = 0
        except OSError as e:
            off = 0 if job["gz"] else st["off"]  # the last persisted block
            h = _rehash(slot, buf, off)
            tries[0] = _net_fail(ctx, tries[0], e)
        finally:
            r.close()
    return off, h


def _rehash(slot, buf, off):
    # Resuming: hash what is already in flash instead of downloading it again.
    import hashlib

    h = hashlib.sha256()
    for blk in range(off // _BLOCK):
        slot.readblocks(blk, buf)
        h.update(buf)
    return h


def open_url(ctx, job, off, tries, reparse):
    # One attempt at GET job["url"] from byte off: the response, or None to try again, after a
    # backoff (network error) or with job["url"] renewed by a describe (403/404: an expired
    # pre-signed URL; the service signs a new one on every hand-out). tries = [network
    # failures, URL refreshes] in a row, shared across attempts; Failed when they run out.
    from iotjobs import http
    from iotjobs.board import nomem

    cfg = ctx.config
    ctx.tls_open()
    try:
        r = http.open(
            job["url"],
            off,
            _read(cfg.get("ota_ca_file") or cfg["ca_file"]),
            cfg["timeout_ms"],
            bool(cfg.get("ota_allow_http")),
        )
    except http.HTTPError as e:
        if e.status in (403, 404) and tries[1] < _URL_REFRESHES:
            tries[1] += 1
            ctx.log("download refused (%d), asking for a new URL" % e.status)
            ctx.board.sleep_ms(1000 * tries[1])
            job.update(reparse(ctx.refresh()))
            return None
        raise Failed("download refused: HTTP %d" % e.status)
    except (OSError, MemoryError) as e:
        if nomem(e):
            raise Failed("out of memory for the HTTPS session: %r" % (e,))
        tries[0] = _net_fail(ctx, tries[0], e)
        return None
    tries[1] = 0
    return r


def _stream(ctx, r, slot, h, buf, tail, off, size, gz=None):
    # The hot loop: one block at a time from the response into the hash and the flash. Only
    # whole blocks are written (writeblocks erases first); the last one is padded with 0xFF.
    # A block allocates nothing (tests/test_ota_stream.py runs this under heap_lock); only the
    # offset checkpoint every _SAVE_EVERY blocks, a due progress report and ctx.check()'s
    # periodic MQTT read do.
    st = ctx.state
    n_since_save = 0
    while off < size:
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
            ctx.progress({"step": "download", "progress": "%d/%d" % (off, size)}, True)
        ctx.check()
        if not gz and off < size and ctx.checkin_due():
            break  # the caller closes the response and checks in
    return off


def _net_fail(ctx, fails, e):
    fails += 1
    if fails > _NET_RETRIES:
        raise Failed("download failed %d times in a row: %r" % (fails, e))
    ms = min(1000 << fails, 30000)
    ctx.log("download: %r, retry %d in %d ms" % (e, fails, ms), "warning")
    ctx.board.sleep_ms(ms // 2 + ctx.board.rand(ms // 2))
    return fails


def _erase_head(ctx):
    _slot(ctx).erase()


def _delta(ctx, doc):
    from iotjobs import delta

    return delta.step(ctx, doc)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _tohex(b):
    import binascii

    return binascii.hexlify(b).decode()
