# The OTA job's steps after the download (iotjobs.ota imports this module when it reaches them,
# so that the download runs without this code in the heap): verify the image (SHA-256, ECDSA
# P-256 signature, version), activate it (set_boot, reset), self-test it after the reset and
# confirm or roll back. check_signature() and self_test() serve the bundle job too.
import asyncio

from iotjobs.agent import Canceled, Failed, room
from iotjobs.ota import aparse


async def verify(ctx, doc):
    st = ctx.state
    await ctx.progress({"step": "verify", "progress": "%d/%d" % (st["off"], st["off"])}, True)
    await room()  # the reply apart from the slot's import
    slot = ctx.board.update_slot(st["slot"])
    job = await aparse(doc, slot.size, bool(ctx.config.get("ota_key_file")))
    await asyncio.sleep_ms(0)
    digest = bytes.fromhex(st["sha256"])
    if job["sha256"] is not None and job["sha256"] != digest:
        return _fail_before_boot(ctx, "SHA-256 mismatch: got %s" % st["sha256"])
    details: dict = {}
    why = await check_signature(ctx, job["sig"], digest, details)
    if why:
        return _fail_before_boot(ctx, why)
    await asyncio.sleep_ms(0)  # the check's end, the version, the security counter: apart
    from iotjobs.board import app_version

    new = app_version(slot)
    if job["version"] is not None and new != job["version"]:
        return _fail_before_boot(
            ctx, "image is version %s, the job says %s" % (new, job["version"])
        )
    await room()
    from iotjobs import secver

    secver.check(ctx, job, slot)
    st["new"] = new
    st["verified"] = details
    return "activate"


async def check_signature(ctx, sig, digest, details):
    # None when the device has no key or the signature is good; else why not. Adds verify_ms.
    key_file = ctx.config.get("ota_key_file")
    if not key_file:
        return None
    import binascii
    import time

    await room()
    from iotjobs import ecdsa

    try:
        raw = binascii.a2b_base64(sig)
    except ValueError:
        return "signature is not base64"
    await asyncio.sleep_ms(0)  # the imports apart from the key's parse
    t0 = time.ticks_ms()
    from iotjobs.board import read

    key = ecdsa.load_pubkey(read(key_file))
    await asyncio.sleep_ms(0)  # the imports and the key's parse apart from the check
    ok = await ecdsa.verify(key, digest, raw)
    details["verify_ms"] = str(time.ticks_diff(time.ticks_ms(), t0))
    return None if ok else "bad signature"


async def self_test(ctx):
    # None when the new code passed: the broker answered (ctx.check) and the application's
    # hook (board.self_test, from its selftest.py) returned None/True in time; else why not.
    import time

    b = ctx.board
    t0 = time.ticks_ms()
    hook = getattr(b, "self_test", None)
    try:
        await ctx.check()
        r = hook(ctx) if hook is not None else None
        if hasattr(r, "send"):  # an async def self-test
            r = await r  # type: ignore[misc]
        if r is False or isinstance(r, str):
            return "self-test failed" + (": " + r if r else "")
    except (Canceled, Failed):
        raise
    except Exception as e:
        return "self-test raised %r" % (e,)
    if time.ticks_diff(time.ticks_ms(), t0) > ctx.config["self_test_timeout_ms"]:
        return "self-test took too long"
    return None


def _fail_before_boot(ctx, reason):
    # Nothing was switched: erase the first block so that a half-good image can never be
    # booted by accident, and fail the job. The running firmware is untouched.
    ctx.board.update_slot(ctx.state["slot"]).erase()
    raise Failed(reason)


async def activate(ctx, doc):
    # set_boot validates the image the way the bootloader will (ESP-IDF refuses a bad header,
    # checksum or appended hash) and makes the slot boot next, once, pending verification. That
    # check reads and hashes the whole image in C without yielding (~0.1 s for 1 MiB on a
    # board), so it is the last thing before the reset: after the application's reboot window,
    # where the reset's own gap takes it, and with no yield between it and the saved state.
    st = ctx.state
    b = ctx.board
    if b.running_slot().label == st["slot"]:
        return "booting"  # the power went between set_boot and its save: the new image runs
    slot = b.update_slot(st["slot"])
    st["mr"] = ctx.memresets()  # so that booting() tells a reset for memory from a bad image
    await asyncio.sleep_ms(0)  # the slots' lookups apart from the save and the report

    def boot_next():
        try:
            slot.activate()
        except OSError as e:
            _fail_before_boot(ctx, "the bootloader would refuse this image (%r)" % (e,))
        st["step"] = "booting"  # saved by ctx.reboot() before the reset

    # self_test and updatedBy as AWS's OTA agent reports them across the reboot.
    await ctx.reboot(
        {
            "step": "rebooting",
            "progress": "%d/%d" % (st["off"], st["off"]),
            "self_test": "ready",
            "updatedBy": st["old"],
        },
        boot_next,
    )
    return "booting"  # not reached on a board


async def booting(ctx, doc):
    # After the reset. The bootloader either started the new image (pending verification) or
    # rolled back by itself because the image did not come up.
    st = ctx.state
    b = ctx.board
    await room()  # the slot's import (the first in this boot) in a stretch of its own
    running = b.running_slot()
    await asyncio.sleep_ms(0)
    if running.label != st["slot"]:
        # The new image ran unconfirmed until a reset: the bootloader rolled back. When its
        # boot found no memory for MQTT (mishap.link_failed reset for a fresh heap), say so.
        why = "did not start"
        if ctx.memresets() > st.get("mr", 0):
            why = "had no memory for the MQTT session before its self-test and was rolled back"
        raise Failed("new firmware %s %s; still running %s" % (st["new"], why, st["old"]))
    await ctx.progress({"step": "self-test", "self_test": "active", "updatedBy": st["old"]}, True)
    reason = await self_test(ctx)
    if reason is None:
        running.confirm()
        await asyncio.sleep_ms(0)  # the otadata write apart from the security counter's
        details = {"reason": "running %s" % st["new"], "firmware": st["new"]}
        details["updatedBy"] = st["old"]
        sv = st.get("sv", 0)
        details["secure_version"] = str(sv)
        await room()
        try:
            from iotjobs import secver

            secver.confirm(sv)
        except OSError as e:  # the image runs and is confirmed; say the counter did not move
            ctx.log("security counter not raised: %r" % (e,), "error")
            details["secver_error"] = repr(e)
        details["previous"] = st["old"]
        details.update(st.get("verified", {}))
        return details
    # Roll back: boot the old slot again and report from there.
    st["reason"] = reason
    st["step"] = "rolledback"
    ctx.save()
    running.rollback()
    await ctx.reboot({"step": "rolling back", "reason": reason})
    return "rolledback"  # not reached on a board


async def rolledback(ctx, doc):
    st = ctx.state
    raise Failed("%s; rolled back to %s" % (st["reason"], ctx.board.firmware_version()))
