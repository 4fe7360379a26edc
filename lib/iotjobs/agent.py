# The jobs agent: takes executions from AWS IoT Jobs one at a time, runs their handlers and
# reports the outcome, across network failures, service errors and resets. It is an asyncio
# task inside the application (`asyncio.create_task(agent.serve())`, see app.py): every wait
# here, in the transport and in the handlers yields to the event loop, and the application
# publishes and subscribes through the agent's one MQTT session (publish(), subscribe()).
#
# States (one job at a time; a handler is a coroutine the agent's task awaits):
#   IDLE     connected, nothing to do: wait for notify-next with an execution -> ASK
#   ASK      start-next sent: an execution -> RUN (once the application's update window,
#            may_start, allows it: iotjobs.guest); none -> IDLE
#   RUN      execution marked IN_PROGRESS (expectedVersion), handler running; it talks to the
#            service only through its Context (progress, check, refresh, reboot)
#   FINISH   final status persisted, then reported until the service has it -> ASK
#   RESUME   after a (re)start with persisted state: describe the job, then FINISH (report
#            already decided) or RUN again with ctx.resumed (or FAIL if the handler cannot
#            resume)
# What decides the next state is held as these, and nothing else:
#   _sync       a new MQTT session: resubscribed, must re-synchronise -> RESUME or ASK
#   _want_next  notify-next named an execution while IDLE (or after FINISH) -> ASK
#   stale       while RUN: notify-next stopped naming our job; check() describes it
#   _job        the persisted job state ({} when IDLE); "final" in it -> FINISH
# Error replies follow protocol.REACTIONS: RETRY inside _request (bounded, backoff + jitter),
# REFRESH = one describe then decide again, DROP = stop working on the job, BUG = log, report
# FAILED once, go on. A network error anywhere drops the link; the Link reconnects with backoff
# and on_connect re-subscribes and re-syncs from the persisted state.
import asyncio
import gc
import json
import os
import sys
import time

from iotjobs import protocol
from micropython import const

STATE_FILE = "jobstate.json"
# A job given up on the board because even its report did not fit (mishap.link_failed): its
# decision, reported when the service offers the job again (job.run).
GAVEUP_FILE = "gaveup.json"
_RETRIES = const(5)
_ETIMEDOUT = const(110)
_EAGAIN = const(11)
# A waiting agent wakes when the MQTT socket has bytes, the application queues a message, the
# keepalive has something to do (Transport.wait), or after half the watchdog's timeout (it is
# fed). An idle turn lasts _IDLE_MS. Each wake costs a few small allocations (the wait's
# generator, asyncio's poller entry), each turn a few more (its coroutines).
_IDLE_MS = const(10000)
# GC heap allocated (live and garbage) above which a job's import is preceded by a GC pass of
# its own (room()): less than 20 KB left of a board's 56 KB first area. Not gc.mem_free(): on
# ESP32 (split heap) it adds what the heap could still grow by, the IDF heap's largest free
# block (82 KB on esp32-plain), so it never says low there.
_ROOM = const(36864)
# Boots in a row inside one job (no clean step between) after which it ends FAILED.
BOOT_LOOP = const(3)
LEVELS = ("debug", "info", "warning", "error")  # lowest first: config.json's log_level


class Rejected(Exception):
    # The document cannot be run (malformed, unsupported, too big): REJECTED with the reason.
    pass


class Failed(Exception):
    # The work was tried and did not succeed: FAILED with the reason.
    pass


class Canceled(Exception):
    # The execution was canceled, removed or finished elsewhere: stop, report nothing.
    pass


# op -> (fn or "module:function", resumable)
_handlers = {}  # type: dict


def register(op, fn, resumable=True):
    # fn(ctx, document) -> statusDetails dict for SUCCEEDED (or None); raises Rejected, Failed.
    # A handler that is not resumable is failed with a reason if a reset interrupts it, instead
    # of running twice. fn may be "module:function", imported only when a job needs it.
    _handlers[op] = (fn, resumable)


def _resolve(op):
    fn, resumable = _handlers.get(op, (None, False))
    if isinstance(fn, str):
        # "module:function", imported when a job needs it (and unloaded after it, in _run) so
        # that handlers cost no RAM while idle. A module missing from this build means the
        # operation is not supported here.
        mod, _, name = fn.partition(":")
        try:
            fn = getattr(__import__(mod, None, None, [name]), name)
        except (ImportError, AttributeError):
            fn = None
    return fn, resumable


def unload(names):
    # Forgets these modules (sys.modules names): the GC frees their code once nothing uses it.
    pkg = sys.modules.get("iotjobs")
    for n in names:
        sys.modules.pop(n, None)
        try:
            delattr(pkg, n[8:])
        except (AttributeError, TypeError, KeyError):  # KeyError: a name not under iotjobs
            pass


async def room():
    # Awaited right before each lazy import of a job's code: a yield, and a GC pass in a
    # stretch of its own when the heap is low. A job runs on a nearly full heap, and an import
    # allocates its code (1-7 KB) and, its first time in a boot, its names: now and then the
    # qstr pool's next, twice the last (4.6 KB in one piece at ~620 names). Where that found
    # no room, a GC pass ran inside the import and tripled its stretch (bench.guest; each
    # such pass came with 10-14 KB free: in fragments). A pass costs about an import's time,
    # so only above _ROOM allocated (on esp32-plain, while a job runs, that is every time: the
    # idle agent alone holds 40 KB).
    await asyncio.sleep_ms(0)
    if gc.mem_alloc() > _ROOM:
        gc.collect()
        await asyncio.sleep_ms(0)


def _rank(level):
    return LEVELS.index(level) if level in LEVELS else 1


def _diff(a, b):
    # Called per OTA block: no import here (an import of a built-in searches the filesystem
    # path on every call, ~49,000 failed stats per 8 MiB).
    return time.ticks_diff(a, b)


class _Drop(Exception):
    # The execution is gone, terminal or unusable: stop working on it (internal).
    pass


class _TooBig(OSError):
    # The reply to our request was larger than the device can hold (args[0]: its size); it
    # was drained from the socket unread. Where nobody expects it, it is handled like a lost
    # reply (an OSError): the link is re-made and the state re-synced.
    pass


def _too_big(e):
    return _rare("too_big", e.args[0])


def _rare(fn, *args):
    # A rarely taken path (mishap.py), its code loaded only while it runs.
    from iotjobs import mishap

    try:
        return getattr(mishap, fn)(*args)
    finally:
        unload(("iotjobs.mishap",))


class Agent:
    def __init__(self, cfg, board, link, log_level="info"):
        self.cfg = cfg
        self.thing = cfg["thing_name"]
        self.board = board
        self.link = link
        self._level = _rank(log_level)
        self._tag = "%05x" % board.rand(0xFFFFF)
        self._n = 0
        self._await = None  # clientToken of the request in flight
        self._await_kind = None  # its topic kind (protocol.START_NEXT, DESCRIBE, ...)
        self._reply = None  # (accepted, body) for it; (None, size) when it was too large
        self._want_next = False
        self.stale = False  # the running job may have been canceled: describe it
        self._sync = False  # (re)connected: resubscribed, must resynchronise
        self._job = {}  # the persisted job state of the running job; empty when there is none
        # The application's side: its subscriptions [(filter, callback)], its outgoing
        # messages [(topic, payload)] (at most _QUEUE, oldest dropped first and counted),
        # and its update windows: may_start() / may_reboot() -> true when a job may start /
        # the board may reset now (None: always).
        self._guest = None  # iotjobs.guest once the application uses publish/subscribe
        self._subs = []
        self._out = []
        self.dropped = 0
        self.sent = 0
        self.tls_opens = 0
        self.may_start = None
        self.may_reboot = None
        link.set_on_connect(self._on_connect)
        link.on_fail = self._link_failed

    def log(self, level, msg):
        if _rank(level) >= self._level:
            print("%s %s" % (level[0].upper(), msg))

    # ---- the application's side: one MQTT session for everyone (iotjobs.guest, loaded before
    # an installed application starts (app._main) or when one first uses it: an agent without
    # an application does not hold its code)

    def publish(self, topic, payload):
        # Queues a QoS 0 message on one of this thing's telemetry topics (topic()); see guest.
        self._app().publish(self, topic, payload)
        t = self.link.t
        if t is not None:
            t.wake()  # a waiting agent sends it now

    def subscribe(self, filt, callback):
        # callback(topic, msg) for every message on filt, under this thing's command topics.
        self._app().subscribe(self, filt, callback)

    def topic(self, name):
        return self._app().topic(self, name)

    def command(self, name):
        return self._app().command(self, name)

    def handshakes(self):
        # TLS sessions opened so far (MQTT connects tried, HTTPS sessions of jobs): the loop is
        # held for the length of each handshake (seconds of CPU on a board).
        return self.link.attempts + self.tls_opens

    def _app(self):
        g = self._guest
        if g is None:
            from iotjobs import guest

            g = self._guest = guest
        return g

    # ---- the job surface (what a handler's Context uses)

    def memresets(self):
        # How often this job's board reset for a fresh heap so far (mishap.link_failed).
        return self._job.get("memreset", 0)

    def persist(self, step=True):
        # step: the handler got somewhere (its own save), which ends a boot loop's count.
        if step:
            self._job.pop("boots", None)
        save(STATE_FILE, self._job)

    async def poll(self):
        # Connects if needed, sends the application's queue and reads what MQTT has; never
        # waits for a message.
        t = await self.link.ensure()
        self._pump(t)

    def pump(self):
        # As poll() when MQTT is up (-> True), else False; allocates nothing of its own.
        t = self.link.t
        if t is None:
            return False
        self._pump(t)
        return True

    async def sleep(self, ms):
        # Waits ms, fed, yielding to the event loop.
        b = self.board
        t0 = b.ticks_ms()
        while True:
            b.feed()
            left = ms - _diff(b.ticks_ms(), t0)
            if left <= 0:
                return
            await asyncio.sleep_ms(left if left < 500 else 500)

    # ---- MQTT plumbing

    def _on_connect(self, t):
        t.set_callback(self._on_msg, self._on_big)
        for topic in protocol.subscriptions(self.thing):
            t.subscribe(topic)
        for filt, _ in self._subs:
            t.subscribe(filt)
        self._sync = True
        self.stale = bool(self._job)
        self.log("info", "connected, subscribed")

    def _link_failed(self, e):
        # A rare path (mishap.link_failed): with a job under way, at most three times; with
        # none, only once MQTT has connected in this boot.
        j = self._job
        if j.get("memreset", 0) < 3 if j else self.link.connects:
            _rare("link_failed", self, e)

    def _on_msg(self, topic, msg):
        kind = None  # a MemoryError may come before the topic is known (decode, deliver)
        try:
            topic = topic.decode()
            kind = protocol.parse_topic(self.thing, topic)
            if kind is None:
                if self._subs:
                    self._guest.deliver(self, topic, msg)  # type: ignore[union-attr]
                return
            body = json.loads(msg)
        except (ValueError, UnicodeError):
            self.log("warning", "unparsable message on %s" % topic)
            return
        except MemoryError:
            n = len(msg)
            msg = None
            _rare("nomem", self, kind, n, topic)
            return
        if kind[0] == protocol.NOTIFY_NEXT:
            ex = protocol.reply_execution(body)
            if not self._job:
                if ex is not None:
                    self._want_next = True
            elif ex is None or ex.job_id != self._job["job"]:
                self.stale = True
        elif kind[2] is not None and isinstance(body, dict):
            if self._await is not None and body.get("clientToken") == self._await:
                self._reply = (kind[2], body)

    def _on_big(self, topic, n):
        _rare("on_big", self, topic, n)

    def _pump(self, t):
        # Sends what the application queued, then reads every message already there.
        try:
            if self._out:
                self._guest.flush(self, t)  # type: ignore[union-attr]
            while t.poll(0):
                pass
        except MemoryError as e:
            # Not a network error, but the MQTT stream is mid-packet: start it afresh.
            self.log("error", "out of memory reading MQTT")
            self.link.drop(e)
        except Exception as e:
            self.link.drop(e)

    async def _wait(self, ms, done):
        # Up to ms for done() (or a dropped link): reads MQTT whenever its socket has bytes,
        # yielding to the event loop in between (Transport.wait). Raises OSError when the link
        # went down.
        b = self.board
        t0 = b.ticks_ms()
        while True:
            t = self.link.t
            if t is None:
                raise OSError(_ETIMEDOUT)
            self._pump(t)
            b.feed()
            if done():
                return True
            left = ms - _diff(b.ticks_ms(), t0)
            if left <= 0:
                return False
            feed = self.cfg.get("wdt_timeout_ms", 0) >> 1
            await t.wait(left if not feed or left < feed else feed)

    def _replied(self):
        return self._reply is not None

    async def _request(self, topic, build):
        # Publishes build(token) and waits for the reply with that token: (accepted, body).
        # RETRY codes are retried here with backoff and jitter; after _RETRIES, or when no
        # reply comes in time, raises OSError (the link is then dropped and re-synced).
        backoff = self.cfg["backoff_min_ms"]
        attempt = 0
        self._await_kind = protocol.parse_topic(self.thing, topic + "/accepted")[0]
        b = self.board
        while True:
            # A yield first: what the caller did before (a step's flash work, a persist) and
            # the request are not one stretch without one; and a GC pass apart from both when
            # the heap holds much (room): else the request's JSON often met a full heap and
            # the pass ran inside its stretch (bench.guest: 0.6-0.7 ms at booting).
            await room()
            self._n += 1
            token = "%s-%d" % (self._tag, self._n)
            self._await = token
            self._reply = None
            t = await self.link.ensure()
            t.publish(topic, build(token))
            try:
                if not await self._wait(self.cfg["timeout_ms"], self._replied):
                    raise OSError(_ETIMEDOUT)
            finally:
                self._await = None
            await asyncio.sleep_ms(0)  # the reply's read apart from what the caller does next
            ok, body = self._reply or (None, 0)  # set: _wait() saw it
            self._reply = None
            if ok is None:
                raise _TooBig(body)
            if ok:
                return True, body
            code, msg = protocol.reply_error(body)
            if protocol.reaction(code) != protocol.RETRY:
                return False, body
            attempt += 1
            if attempt > _RETRIES:
                _rare("retry", self, topic, code, None, _RETRIES)
                raise OSError(_EAGAIN)
            wait = b.jitter(backoff)
            _rare("retry", self, topic, code, wait, attempt)
            await self.sleep(wait)
            backoff = min(backoff * 2, self.cfg["backoff_max_ms"])

    # ---- persisted state

    def _clear(self):
        self._job = {}
        try:
            os.remove(STATE_FILE)
        except OSError:
            pass

    # ---- the state machine

    async def serve(self, cycles=-1):
        # The agent's task: asyncio.create_task(agent.serve()). cycles < 0 runs for ever (a
        # board), else that many turns (tests).
        self.board.start_watchdog()
        try:
            with open(STATE_FILE) as f:
                j = json.load(f)
        except (OSError, ValueError):  # none, or corrupted some other way than by save()
            j = None
        if j is not None and not (
            isinstance(j, dict)
            and protocol.valid_job_id(j.get("job"))
            and isinstance(j.get("data"), dict)
        ):
            self.log("warning", "ignoring a malformed %s" % STATE_FILE)
            j = None
        self._job = j or {}
        if j:
            await room()  # the state's read apart from the boot's count (mishap's import)
            _rare("count_boot", self, j)
        await asyncio.sleep_ms(0)  # the state read (and saved) apart from the first connect
        while cycles != 0:
            cycles -= 1
            try:
                await self.turn()
            except OSError as e:
                self.link.drop(e)
            except MemoryError as e:
                # Not the network's fault; whatever was in flight is re-synced from the
                # persisted state on the fresh connection, without a reset.
                self.log("error", "out of memory, re-syncing")
                self.link.drop(e)

    def _woken(self):
        return self._want_next or self._sync

    async def turn(self):
        await self.link.ensure()
        if self._sync:
            self._sync = False
            self.stale = False
            if self._job:
                await self._do("resume")
            self._want_next = True
        if self._want_next:
            self._want_next = False
            await self._start_next()
        else:
            await self._wait(_IDLE_MS, self._woken)
        self.board.feed()

    async def _start_next(self):
        ex = await self._next()
        if ex is not None:
            self._job = {"job": ex.job_id, "version": ex.version, "op": None, "data": {}}
            await self._do("run", ex, False)

    async def _next(self):
        # start-next's execution, or None (none pending, refused, too large: handled here). A
        # frame of its own: the reply (every field of the execution, the document parsed twice
        # over) is not held, not even in a stale slot, while the job runs.
        topic = protocol.topic_start_next(self.thing)
        try:
            ok, body = await self._request(topic, lambda tok: protocol.start_next(tok))
        except _TooBig as e:
            await self._do("too_big", e)
            return None
        ex = protocol.reply_execution(body) if ok else None
        if ex is None:
            if ok and not isinstance(body.get("execution"), dict):
                self.log("info", "no pending job")
            else:
                _rare("no_next", self, ok, body)  # refused, or an unusable execution
        return ex

    async def _do(self, fn, *args):
        # Job-time code (iotjobs.job: run a handler, report, resume), loaded for a job and
        # unloaded after it, so that an idle agent does not hold it.
        await room()
        from iotjobs import job

        try:
            await asyncio.sleep_ms(0)  # the import apart from the work
            await getattr(job, fn)(self, *args)
        finally:
            unload(("iotjobs.job",))

    # ---- the job surface a handler's Context uses (iotjobs.job, loaded while a job runs)

    async def report(self, status, details):
        await sys.modules["iotjobs.job"].report(self, status, details)

    async def describe(self, job_id, with_doc):
        return await sys.modules["iotjobs.job"].describe(self, job_id, with_doc)


def save(path, obj):
    # Small JSON files that survive power loss: write a temporary file, then rename it over
    # the old one (atomic on LittleFS and POSIX): after a power cut the file holds the old or
    # the new content, never a mix.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.rename(tmp, path)


def _forget(mods):
    # Unloads what a handler imported (its module and the library's helpers): an idle agent
    # holds none. Only the library's modules and handlers' own: a module the application
    # imported meanwhile (its tasks run beside the job) stays loaded, or its next import would
    # make a second copy of it with fresh state.
    unload([n for n in sys.modules if n not in mods and _ours(n)])
    gc.collect()


def _ours(name):
    if name.startswith("iotjobs."):
        return True
    for fn, _ in _handlers.values():
        # the handler's module, and its package if the job loaded it (it holds the module)
        if isinstance(fn, str) and (fn.partition(":")[0] + ".").startswith(name + "."):
            return True
    return False
