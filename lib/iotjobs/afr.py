# AWS's afr_ota documents (from `aws iot create-ota-update`), on top of iotjobs.ota: the
# certfile rule, and several files in one update (a firmware image and an application-file
# bundle), one after the other in the document's order, each a whole update of its own
# (download, verify, activate, reset, self-test, confirm) with its own persisted state; a file
# that fails ends the job FAILED naming it, files before it stay installed (each was verified
# and self-tested). Imported only for afr_ota jobs.
from iotjobs.agent import Failed, Rejected, room
from iotjobs.ota import aparse
from iotjobs.ota import handle as _run
from micropython import const

_FIRMWARE = const(0)  # afr_ota fileType of an app image (AWS's default)
_APP_BUNDLE = const(1)  # fileType of an application-file bundle (a tar, see iotjobs.bundle)
_BUNDLE_MAX = const(1048576)


async def handle(ctx, doc):
    afr = doc.get("afr_ota")
    files = afr.get("files") if isinstance(afr, dict) else None
    if not isinstance(files, list) or len(files) < 2:
        if "step" not in ctx.state:
            _check_certfile(ctx, doc)
        return await _run(ctx, doc)
    return await several(ctx, afr, files)


def _check_certfile(ctx, doc):
    # afr_ota's certfile names the signer's key or certificate on the device: only the one
    # the device config trusts (ota_key_file) is accepted, never a file a job could choose.
    afr = doc.get("afr_ota")
    files = afr.get("files") if isinstance(afr, dict) else None
    if not isinstance(files, list) or len(files) != 1 or not isinstance(files[0], dict):
        return  # iotjobs.ota.parse rejects it
    cf = files[0].get("certfile")
    if not cf:
        return
    key = ctx.config.get("ota_key_file")
    if not isinstance(cf, str) or key is None or _basename(cf) != _basename(key):
        raise Rejected(
            "certfile %r is not this device's signing key (%s)" % (cf, _basename(key or "none"))
        )


def _basename(path):
    return path[path.rfind("/") + 1 :]


async def several(ctx, afr, files):
    st = ctx.state
    if "i" not in st:
        kinds = [f.get("fileType", _FIRMWARE) if isinstance(f, dict) else -1 for f in files]
        if len(kinds) != 2 or _FIRMWARE not in kinds or _APP_BUNDLE not in kinds:
            raise Rejected(
                "afr_ota: several files must be one firmware (fileType 0) and one app bundle"
                " (fileType 1)"
            )
        for i, f in enumerate(files):
            sub = {"afr_ota": dict(afr, files=[f])}
            if kinds[i] == _APP_BUNDLE:
                if "HTTP" not in afr.get("protocols", ["HTTP"]):
                    raise Rejected("afr_ota: an app bundle is fetched over HTTP only")
                await aparse(sub, _BUNDLE_MAX, bool(ctx.config.get("ota_key_file")), "bundle limit")
            else:
                await aparse(
                    sub, ctx.board.update_slot().size, bool(ctx.config.get("ota_key_file"))
                )
            _check_certfile(ctx, sub)
        st["i"] = 0
        st["out"] = {}
        ctx.save()
    out = st["out"]
    while st["i"] < len(files):
        i = st["i"]
        f = files[i]
        sub = {"afr_ota": dict(afr, files=[f])}
        if f.get("fileType", _FIRMWARE) == _APP_BUNDLE:
            await room()
            from iotjobs.bundle import handle as fn
        else:
            fn = _run
        part = st.setdefault("f%d" % i, {})
        try:
            r = await fn(ctx.part(part), sub)
        except (Failed, Rejected) as e:
            raise Failed("file %d (%s): %s" % (i, f.get("filepath", "?"), e))
        for k, v in (r or {}).items():
            out[k if k not in out else "%s_%d" % (k, i)] = v
        st["i"] = i + 1
        del st["f%d" % i]
        ctx.save()
    out["files_done"] = str(len(files))
    return out
