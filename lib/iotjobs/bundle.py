# Application-file update: a tar of .py/.mpy files from a pre-signed URL, extracted while it
# streams into a staging folder, verified (SHA-256 of the tar, ECDSA signature), swapped in
# atomically (iotjobs.appswap), then a reset, the self-test, and confirm or roll back.
#
#   {"operation": "bundle", "url": "${aws:iot:s3-presigned-url:https://...}", "size": 20480,
#    "sha256": "<64 hex of the tar>", "signature": "<base64 DER>", "version": "app-7"}
#
# Nothing of the staged set is used before the whole tar checked out. An interrupted download
# starts again from the beginning (bundles are small; a tar cannot be resumed mid-file without
# its earlier headers).
from iotjobs import appswap
from iotjobs.agent import Failed, room
from iotjobs.fetch import net_fail, open_url
from iotjobs.ota import acheck, aparse, parse, run
from micropython import const

_MAX = const(1048576)  # bundle size limit
_EXTS = (".py", ".mpy")


async def handle(ctx, doc):
    st = ctx.state
    app = ctx.config["app_dir"]
    if "step" not in st:
        await acheck(ctx, doc, _MAX, "bundle limit")
        st["step"] = "download"
        st["old"] = appswap.version(app)
        ctx.save()
    return await run(ctx, doc, _step)


async def _step(ctx, doc, name):
    return await _STEPS[name](ctx, doc, ctx.config["app_dir"])


async def _download(ctx, doc, app):
    keyed = bool(ctx.config.get("ota_key_file"))
    job = await aparse(doc, _MAX, keyed, "bundle limit")
    stage, h, files = await _fetch(ctx, job, app, keyed)
    from iotjobs.agent import unload

    unload(("iotjobs.http",))  # the download's code goes before ECDSA comes in
    digest = h.digest()
    if job["sha256"] is not None and job["sha256"] != digest:
        appswap.rmtree(stage)
        raise Failed("SHA-256 mismatch")
    details = {"files": str(files)}
    await room()  # the download's code gone (and collected) before ECDSA's import
    from iotjobs.otaboot import check_signature

    why = await check_signature(ctx, job["sig"], digest, details)
    if why:
        appswap.rmtree(stage)
        raise Failed(why)
    appswap.stage_done(app, job["version"])
    ctx.state["new"] = job["version"] or "unknown"
    ctx.state["verified"] = details
    return "activate"


async def _fetch(ctx, job, app, keyed):
    # The tar, extracted into the staging folder while it streams: (stage, hash, files).
    import hashlib

    buf = bytearray(4096)
    tries = [0, 0]
    while True:
        await ctx.checkin({"step": "download", "progress": "0/%d" % job["size"]})  # see ota
        await ctx.check()
        stage = appswap.stage_begin(app)
        r = await open_url(ctx, job, 0, tries, lambda d: parse(d, _MAX, keyed, "bundle limit"))
        if r is None:
            continue
        try:
            if r.total != job["size"]:
                raise Failed("the server has %d bytes, the job says %d" % (r.total, job["size"]))
            h = hashlib.sha256()
            return stage, h, await _extract(ctx, r, h, buf, stage, job["size"])
        except OSError as e:
            tries[0] = await net_fail(ctx, tries[0], e)
        except Failed:
            appswap.rmtree(stage)
            raise
        finally:
            r.close()


async def _extract(ctx, r, h, buf, stage, size):
    # Stream the tar: 512-byte headers, file data padded to 512, two zero blocks at the end.
    mv = memoryview(buf)
    got = 0
    files = 0
    ended = False
    while got < size:
        r.readinto(buf, 512)
        h.update(mv[:512])
        got += 512
        if not any(mv[:512]):
            ended = True
            continue
        if ended:
            raise Failed("bundle: data after the end of the archive")
        path, n, kind = _header(buf)
        if kind == "dir":
            appswap.makedirs(stage + "/" + path)
            continue
        parent = path.rpartition("/")[0]
        if parent:
            appswap.makedirs(stage + "/" + parent)
        left = (n + 511) // 512 * 512
        with open(stage + "/" + path, "wb") as f:
            while left:
                k = left if left < 4096 else 4096
                r.readinto(buf, k)
                h.update(buf if k == 4096 else mv[:k])
                w = n if n < k else k
                f.write(buf if w == 4096 else mv[:w])
                n -= w
                left -= k
                got += k
                await ctx.tick()
        files += 1
        if ctx.progress_due():
            await ctx.progress({"step": "download", "progress": "%d/%d" % (got, size)}, True)
    if not ended:
        raise Failed("bundle: archive has no end marker")
    return files


def _header(buf):
    # -> (safe relative path, size, "file"|"dir"); Failed for anything else.
    name = _cstr(buf, 0, 100)
    if buf[257:262] == b"ustar":
        prefix = _cstr(buf, 345, 155)
        if prefix:
            name = prefix + "/" + name
    kind = buf[156]
    try:
        n = int(_cstr(buf, 124, 12).strip() or "0", 8)
    except ValueError:
        raise Failed("bundle: bad size field for %r" % name)
    if kind == 0x35:  # '5'
        return _safe(name.rstrip("/"), True), 0, "dir"
    if kind not in (0, 0x30):  # '0' or NUL: a regular file
        raise Failed("bundle: %r is not a regular file or folder (type %r)" % (name, chr(kind)))
    return _safe(name, False), n, "file"


def _safe(name, is_dir):
    # Refuse anything that could land outside the staging folder or is not application code.
    if name.startswith("./"):
        name = name[2:]
    if not name or name.startswith("/") or "\\" in name or len(name) > 128:
        raise Failed("bundle: unsafe path %r" % name)
    for part in name.split("/"):
        if part in ("", ".", ".."):
            raise Failed("bundle: unsafe path %r" % name)
    if not is_dir and not name.endswith(_EXTS):
        raise Failed("bundle: %r is not a .py or .mpy file" % name)
    return name


def _cstr(buf, off, n):
    raw = bytes(buf[off : off + n])
    end = raw.find(b"\0")
    return (raw if end < 0 else raw[:end]).decode()


async def _activate(ctx, doc, app):
    appswap.swap(app)
    ctx.state["step"] = "booting"
    ctx.state["boots"] = 0
    ctx.save()
    await ctx.reboot({"step": "rebooting"})
    return "booting"  # not reached on a board


async def _booting(ctx, doc, app):
    st = ctx.state
    st["boots"] = st.get("boots", 0) + 1
    ctx.save()
    reason = None
    if st["boots"] > 1:
        # Reset again before the self-test finished: treat like the bootloader treats an
        # unconfirmed image.
        reason = "reset during the self-test"
    else:
        await room()
        from iotjobs.otaboot import self_test

        reason = await self_test(ctx)
    if reason is None:
        appswap.confirm(app)
        details = {"reason": "app %s running" % st["new"], "app": st["new"], "previous": st["old"]}
        details.update(st.get("verified", {}))
        return details
    st["reason"] = reason
    st["step"] = "rolledback"
    ctx.save()
    appswap.rollback(app)
    await ctx.reboot({"step": "rolling back", "reason": reason})
    return "rolledback"  # not reached on a board


async def _rolledback(ctx, doc, app):
    st = ctx.state
    raise Failed("%s; rolled back to app %s" % (st["reason"], appswap.version(app)))


_STEPS = {
    "download": _download,
    "activate": _activate,
    "booting": _booting,
    "rolledback": _rolledback,
}
