# The agent's rarely taken paths, imported when one happens and unloaded after it (agent._rare)
# so that an idle agent does not hold their code: messages too large to hold, boot loops, and
# an MQTT session that no longer fits in memory.
from iotjobs import protocol
from iotjobs.agent import BOOT_LOOP, GAVEUP_FILE, save
from micropython import const

# The last reset for memory with no job (time.time()), and the least time between two.
IDLE_FILE = "memreset.json"
_IDLE_GAP_S = const(600)


def too_big(n):
    return {"reason": "job document too large for this device: a %d-byte message" % n}


def big(a, kind, n):
    # A message the device could not hold (parse or read): what it was is told by its topic.
    if kind is None:
        return
    if kind[0] == protocol.NOTIFY_NEXT:
        # Some job is next: start-next (or the running job's describe) finds out which.
        if a._job:
            a.stale = True
        else:
            a._want_next = True
    elif kind[2] and a._await is not None and kind[0] == a._await_kind:
        # The accepted reply to the request in flight (one at a time), unread.
        a._reply = (None, n)


def nomem(a, kind, n, topic):
    # A message that came whole but had no memory to be parsed (Agent._on_msg).
    a.log("warning", "no memory to parse a %d-byte message on %s" % (n, topic))
    big(a, kind, n)


def retry(a, topic, code, wait, tries):
    # A request the service answered with a RETRY code tries times (Agent._request): sent
    # again after wait ms; wait None: given up.
    if wait is None:
        a.log("warning", "%s: still %s after %d tries" % (topic, code, tries))
    else:
        a.log("info", "%s: %s, retry in %d ms" % (topic, code, wait))


def no_next(a, ok, body):
    # start-next gave no execution to run, and not because none is pending (Agent._next).
    if ok:
        a.log("error", "start-next: unusable execution %r" % body["execution"])
    else:
        code, msg = protocol.reply_error(body)
        a.log("error", "start-next refused: %s %s" % (code, msg))


def on_big(a, topic, n):
    try:
        kind = protocol.parse_topic(a.thing, topic.decode())
    except (ValueError, UnicodeError):
        kind = None
    a.log("warning", "dropped a %d-byte message on %s" % (n, topic))
    big(a, kind, n)


def link_failed(a, e):
    # MQTT cannot connect and the IDF heap has no room for a TLS session: a job's code grew
    # the GC heap into it, and MicroPython does not always give that back. With a job under
    # way, reset (its state persisted) so that it goes on, or its report is sent, on a fresh
    # heap: once to go on, once more with the job FAILED naming memory. If even that boot
    # cannot connect beside the job's state, the job is given up on the board (its decision
    # kept in GAVEUP_FILE) and the board resets into an idle agent, which connects as at
    # first boot and sends the decision when the service offers the job again: never wedged.
    # With no job, a board whose MQTT session fitted earlier in this boot resets too, at most
    # once per _IDLE_GAP_S (persisted in IDLE_FILE): never wedged, never a reset loop.
    import time

    from iotjobs.board import nomem

    j = a._job
    why = a.board.tls_room()
    if why is None:
        if not nomem(e):
            return
        why = "out of memory for the MQTT session: %r" % (e,)
    if not j:
        now = time.time()
        try:
            with open(IDLE_FILE) as f:
                last = int(f.read())
        except (OSError, ValueError):
            last = None
        if last is not None and 0 <= now - last < _IDLE_GAP_S:
            return
        save(IDLE_FILE, now)
        a.log("error", "%s with no job; resetting for a fresh heap" % why)
        a.board.reset()
        return
    n = j["memreset"] = j.get("memreset", 0) + 1
    if n > 1 and "final" not in j:
        j["final"] = [protocol.FAILED, protocol.clean_details({"reason": why})]
    if n > 2:
        save(GAVEUP_FILE, [j["job"], j["final"]])
        a._clear()
        why = "%s: %s; given up on the board until the service offers it" % (j["job"], why)
        a.log("error", why)
    else:
        a.persist(False)
        a.log("error", "%s; resetting for a fresh heap" % why)
    a.board.reset()


async def update(a, body, status, details, refresh):
    # The service refused a job's update (job.update): adopt its version and send it again
    # (once), report a bug FAILED, or stop working on the job (_Drop). Named "update" (a name
    # every board has interned already): a rare path must not add to the names that stay.
    from iotjobs.agent import _Drop
    from iotjobs.job import describe, update

    j = a._job
    code, msg = protocol.reply_error(body)
    r = protocol.reaction(code)
    if r == protocol.REFRESH and refresh:
        ex = await describe(a, j["job"], False)
        if ex is None or ex.terminal():
            raise _Drop("%s, and the job is %s" % (code, ex.status if ex else "gone"))
        a.log("info", "%s: version %s -> %s" % (code, j.get("version"), ex.version))
        j["version"] = ex.version
        return await update(a, status, details, False)
    if r == protocol.BUG and status != protocol.FAILED:
        a.log("error", "update refused: %s %s" % (code, msg))
        reason = protocol.clean_details({"reason": "agent error: %s: %s" % (code, msg)})
        await update(a, protocol.FAILED, reason, False)
        raise _Drop("failed after the service refused an update: %s" % code)
    raise _Drop("update refused: %s %s" % (code, msg))


def count_boot(a, j):
    # Boot-loop detection: every boot inside a job counts, a clean step (the handler saving
    # its state, an accepted progress report) clears the count. Too many in a row: the
    # job ends FAILED without being run (or even read) again; if reporting that is what
    # keeps failing, the job is given up on the board so that the agent goes on.
    boots = j.get("boots", 0) + 1
    j["boots"] = boots
    if boots > 2 * BOOT_LOOP:
        a.log("error", "%s: given up after %d resets in a row" % (j["job"], boots - 1))
        a._clear()
        return
    if boots > BOOT_LOOP and "final" not in j:
        reason = "boot loop: the board reset %d times in a row during this job" % (boots - 1)
        a.log("error", "%s: %s" % (j["job"], reason))
        j["final"] = [protocol.FAILED, {"reason": reason}]
    a.persist(False)


def gave_up(a, job_id):
    # start-next offered job_id: if it is the job given up on the board (link_failed), its
    # decision goes back into the job's state before the file is removed; else None (and a
    # file about another job goes).
    import json
    import os

    try:
        with open(GAVEUP_FILE) as f:
            gave = json.load(f)
    except (OSError, ValueError):
        return None
    if isinstance(gave, list) and len(gave) == 2 and gave[0] == job_id:
        gave = a._job["final"] = gave[1]
        a.persist(False)
    else:
        gave = None
    try:
        os.remove(GAVEUP_FILE)
    except OSError:
        pass
    return gave
