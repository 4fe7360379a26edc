# The agent's job-time code: running an execution's handler, reporting its progress and its
# outcome, resuming it after a reset (see the states in iotjobs.agent). Loaded when a job starts
# (Agent._do) and unloaded when it ends, so that an idle agent does not hold its code.
import asyncio
import sys

from iotjobs import protocol
from iotjobs.agent import (
    GAVEUP_FILE,
    Canceled,
    Failed,
    Rejected,
    _Drop,
    _forget,
    _rare,
    _resolve,
    _too_big,
    _TooBig,
    room,
)


async def report(a, status, details):
    # IN_PROGRESS reports from a running handler: best effort on the network (a lost progress
    # report is harmless), but the service saying "over" stops the handler.
    try:
        await update(a, status, protocol.clean_details(details or {}))
        if "boots" in a._job:  # a clean step: the boot-loop count starts again
            a.persist()
    except _Drop as e:
        a.log("info", str(e))
        raise Canceled()
    except OSError as e:
        a.link.drop(e)


async def describe(a, job_id, with_doc):
    # -> Execution, or None when the service no longer has it for us (ResourceNotFound,
    # TerminalStateReached). Other rejections are our bugs: logged, treated as gone.
    topic = protocol.topic_describe(a.thing, job_id)
    ok, body = await a._request(topic, lambda tok: protocol.describe(tok, with_doc))
    if ok:
        return protocol.reply_execution(body)
    code, msg = protocol.reply_error(body)
    if protocol.reaction(code) != protocol.DROP:
        a.log("error", "describe %s: %s %s" % (job_id, code, msg))
    return None


async def update(a, status, details, refresh=True):
    j = a._job
    topic = protocol.topic_update(a.thing, j["job"])
    # Every IN_PROGRESS (re)starts the service's step timer; a board that dies mid-job ends
    # TIMED_OUT instead of IN_PROGRESS for ever.
    step = (a.cfg.get("step_timeout_min") or None) if status == protocol.IN_PROGRESS else None
    ok, body = await a._request(
        topic,
        lambda tok: protocol.update(tok, status, details, j.get("version"), step_timeout=step),
    )
    if ok:
        v = protocol.reply_state(body)[1]
        if v is not None:
            j["version"] = v
        return
    # Refused: a rare path, its code loaded only while it runs (mishap.update).
    await _rare("update", a, body, status, details, refresh)


async def too_big(a, e):
    # start-next's execution is ours now (IN_PROGRESS) but its document was dropped unread:
    # ask which job it is without the document, and reject it.
    ex = await describe(a, "$next", False)
    if ex is None or ex.terminal():
        return
    a._job = {"job": ex.job_id, "version": ex.version, "op": None, "data": {}}
    await finish(a, protocol.REJECTED, _too_big(e))


async def resume(a):
    j = a._job
    try:
        # A decided job needs no document (and one that looped the board is not read).
        ex = await describe(a, j["job"], "final" not in j)
    except _TooBig as e:
        return await finish(a, protocol.REJECTED, _too_big(e))
    if ex is None or ex.terminal():
        a.log("info", "%s: %s while we were away" % (j["job"], ex.status if ex else "gone"))
        a._clear()
        return
    j["version"] = ex.version
    if "final" in j:
        await finish(a, j["final"][0], j["final"][1])
        return
    a.log("info", "%s: resuming after a restart" % j["job"])
    await asyncio.sleep_ms(0)  # the reply's read apart from the handler's import
    await run(a, ex, True)


async def run(a, ex, resumed):
    j = a._job
    if not resumed:
        import os

        try:
            os.stat(GAVEUP_FILE)  # a job given up on the board (mishap.link_failed)
        except OSError:
            pass
        else:
            gave = _rare("gave_up", a, ex.job_id)  # its decision if it is this job
            if gave is not None:
                return await finish(a, gave[0], gave[1])
    op = protocol.operation(ex.document)
    if ex.document is None:
        return await finish(a, protocol.REJECTED, {"reason": "job document is not a JSON object"})
    if op is None:
        return await finish(a, protocol.REJECTED, {"reason": "job document has no operation"})
    await room()  # the document's checks apart from the handler's import
    mods = list(sys.modules)  # what was loaded before the handler (and its Context)
    fn, resumable = _resolve(op)
    await asyncio.sleep_ms(0)  # the handler's import apart from what follows
    if fn is None:
        return await finish(a, protocol.REJECTED, {"reason": "unsupported operation %r" % op})
    if resumed and not resumable:
        fn = None
        _forget(mods)
        reason = "interrupted by a reset (%s is not resumable)" % op
        return await finish(a, protocol.FAILED, {"reason": reason})
    j["op"] = op
    a.persist(False)
    a.log("info", "%s: %s%s" % (ex.job_id, op, " (resumed)" if resumed else ""))
    status = protocol.FAILED
    ctx = None
    try:
        # The first report before the Context's import: its request and reply are not in the
        # heap beside the Context's code (the config job's GC high-water, docs/memory.md).
        if not resumed:
            await report(a, protocol.IN_PROGRESS, {"step": "started"})
        await room()  # the report apart from the Context's import
        from iotjobs.context import Context  # job-time code: unloaded with the handler's

        ctx = Context(a, ex.job_id, op, j["data"], resumed)
        del Context
        await asyncio.sleep_ms(0)  # the import apart from what follows
        if not resumed and a.may_start is not None:
            await a._app().window(a, ctx, "job")
        await asyncio.sleep_ms(0)  # the handler starts in a stretch of its own
        details = await fn(ctx, ex.document)
        status = protocol.SUCCEEDED
    except Rejected as e:
        status, details = protocol.REJECTED, {"reason": _reason(e)}
    except Failed as e:
        details = {"reason": _reason(e)}
    except Canceled:
        a.log("info", "%s: canceled, handler stopped" % ex.job_id)
        a._clear()
        details = None
    except MemoryError as e:  # freed below, before the report
        details = {"reason": "out of memory: %s" % (e,)}
    except Exception as e:  # a handler bug must not take the agent down
        a.log("error", "%s: handler raised %r" % (ex.job_id, e))
        details = {"reason": "handler error: %r" % (e,)}
    fn = None
    del ctx
    _forget(mods)
    await asyncio.sleep_ms(0)  # the GC pass apart from the final report
    if details is not None or status == protocol.SUCCEEDED:
        await finish(a, status, details if isinstance(details, dict) else {})


async def finish(a, status, details):
    # The final report is persisted before it is sent, so that a reset or a dead link between
    # the decision and the service's acceptance re-sends it instead of losing it.
    j = a._job
    details = protocol.clean_details(details)
    if j.get("final") != [status, details]:
        j["final"] = [status, details]
        a.persist(False)
    while True:
        try:
            await update(a, status, details)
            a.log("info", "%s: %s %s" % (j["job"], status, details.get("reason", "")))
            break
        except _Drop as e:
            a.log("info", "%s: %s" % (j["job"], e))
            break
        except OSError as e:
            a.link.drop(e)
    a._clear()
    a._want_next = True


async def reboot(ctx, doc):
    # The reboot job, {"operation": "reboot"}: report, reset, and SUCCEEDED once the board is
    # back.
    if ctx.state.get("rebooted"):
        return {"reason": "rebooted", "firmware": ctx.board.firmware_version()}
    ctx.state["rebooted"] = True
    await ctx.reboot({"step": "rebooting"})


def _reason(e):
    return str(e.args[0]) if e.args else type(e).__name__
