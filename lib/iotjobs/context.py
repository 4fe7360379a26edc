# What a job's handler gets: the Context of its execution (iotjobs.agent runs the handler with
# one). Loaded when a job starts and unloaded with the handler's code when it ends: an idle
# agent does not hold it.
import asyncio

from iotjobs import protocol
from iotjobs.agent import Canceled, Failed, Rejected, _diff, _too_big, _TooBig
from micropython import const

_CHECK_EVERY_MS = const(200)
_IO_MS = const(10)  # how often a download with nothing to read looks again


class Context:
    # What a handler gets: identity, settings, persisted state, and the service. A handler is
    # `async def fn(ctx, doc)`; what waits here is a coroutine (await it), what does not is a
    # plain method. It uses the agent only through the agent's job surface: persist(),
    # report(), poll(), describe(), memresets(), link, stale.
    def __init__(self, agent, job_id, op, state, resumed):
        self._a = agent
        self.job_id = job_id
        self.op = op
        self.board = agent.board
        self.link = agent.link  # the MQTT session (iotjobs.stream reads its socket)
        self.config = agent.cfg
        self.state = state  # the handler's own dict, persisted by save()
        self.resumed = resumed
        self._last_progress = None
        self._last_check = agent.board.ticks_ms()
        self._paused = None  # ticks when tls_open() closed MQTT for the handler's own session

    def log(self, msg, level="info"):
        self._a.log(level, "%s: %s" % (self.job_id, msg))

    def part(self, state):
        # A Context of this job for one part of it (afr_ota's files) with its own state.
        return Context(self._a, self.job_id, self.op, state, self.resumed)

    def memresets(self):
        # How often this job's board reset for a fresh heap (mishap.link_failed) so far.
        return self._a.memresets()

    def save(self):
        # Persists ctx.state atomically: after a reset the handler runs again with it. A clean
        # step: the boot-loop count starts again.
        self._a.persist()

    def progress_due(self):
        # Whether progress() would report now. Allocates nothing, so that a hot loop builds
        # its details (which allocates) only when they will be sent.
        if self._paused is not None:  # MQTT is closed: reported at the next check-in
            return False
        last = self._last_progress
        if last is None:
            return True
        return _diff(self.board.ticks_ms(), last) >= self.config["progress_interval_ms"]

    async def progress(self, details, force=False):
        # An IN_PROGRESS report with statusDetails, at most one per progress_interval_ms
        # (unless force). Raises Canceled when the service says the job is over.
        if not force and not self.progress_due():
            return False
        self._last_progress = self.board.ticks_ms()
        await self._a.report(protocol.IN_PROGRESS, details)
        return True

    def check_due(self):
        # Feeds the watchdog; whether check() has work to do now. Allocates nothing.
        a = self._a
        a.board.feed()
        if self._paused is not None:  # MQTT is closed: see checkin()
            return False
        return a.stale or _diff(a.board.ticks_ms(), self._last_check) >= _CHECK_EVERY_MS

    def tick(self):
        # What a hot loop awaits once per block: yields to the event loop, and every
        # _CHECK_EVERY_MS does check()'s work. A plain method returning an awaitable (calling
        # a coroutine function allocates): nothing is allocated here unless MQTT is down or
        # the job must be described.
        if self.check_due():
            a = self._a
            self._last_check = a.board.ticks_ms()
            if a.stale or not a.pump():
                return self._resync()
        return asyncio.sleep_ms(0)

    def io_wait(self):
        # What a download loop awaits while its socket has nothing to read: a short sleep
        # (the application runs), the watchdog fed. Allocates nothing.
        self.board.feed()
        return asyncio.sleep_ms(_IO_MS)

    async def check(self):
        # Call often from long work: feeds the watchdog, reads MQTT, raises Canceled when the
        # job was canceled (notify-next stopped naming it, or it is terminal after a describe).
        if not self.check_due():
            await asyncio.sleep_ms(0)
            return
        self._last_check = self._a.board.ticks_ms()
        await self._resync()

    async def _resync(self):
        a = self._a
        await a.poll()
        if a.stale:
            try:
                ex = await a.describe(self.job_id, False)
            except OSError as e:  # ask again on the next check; the work itself goes on
                a.link.drop(e)
                return
            a.stale = False
            if ex is None or ex.terminal():
                raise Canceled()

    async def sleep(self, ms):
        # A wait (backoff) that lets the application run; the watchdog stays fed.
        await self._a.sleep(ms)

    def tls_open(self):
        # Call before the handler opens a TLS session of its own (HTTPS). A plain ESP32 cannot
        # hold two: unless the board has room to spare (PSRAM) or tls_sessions says 2, the MQTT
        # session is closed until the next checkin(). Failed, naming memory, when even the
        # one session does not fit now.
        n = self.config["tls_sessions"]
        b = self.board
        self._a.tls_opens += 1
        if n == 1 or n == 0 and b.tls_room(True):
            self._a.link.pause()
            if self._paused is None:
                self._paused = b.ticks_ms()
        why = b.tls_room()
        if why:
            raise Failed(why)

    def checkin_due(self):
        # Whether MQTT has been closed for checkin_ms: the handler should close its session at
        # the next good point and call checkin(). Allocates nothing.
        p = self._paused
        return p is not None and _diff(self.board.ticks_ms(), p) >= self.config["checkin_ms"]

    async def checkin(self, details):
        # With MQTT closed by tls_open() (and the handler's own session closed): connect, report
        # details, and learn of a cancellation (Canceled), as check() does while connected.
        if self._paused is not None:
            self._paused = None
            await self._a.link.ensure()  # a new session: the agent describes the job at check()
            await self.progress(details, True)
            await self.check()

    async def refresh(self):
        # A fresh copy of the job document (pre-signed URLs are signed anew on every hand-out).
        a = self._a
        while True:
            try:
                ex = await a.describe(self.job_id, True)
                break
            except _TooBig as e:
                raise Rejected(_too_big(e)["reason"])
            except OSError as e:  # no way on without a new URL: wait for the network
                a.link.drop(e)
        if ex is None or ex.terminal():
            raise Canceled()
        if ex.document is None:
            raise Failed("job document is no longer readable")
        return ex.document

    async def reboot(self, details=None, last=None):
        # Persist, report, wait for the application's reboot window, reset. Never returns: the
        # handler runs again after the boot with ctx.resumed and its saved ctx.state. last():
        # what must come right before the reset (set_boot), after the window, with no yield
        # between it, the save of the state it changes and the reset; what it raises ends the
        # handler there, with no reset.
        self.save()
        if details:
            await asyncio.sleep_ms(0)  # the save apart from the report
            await self._a.report(protocol.IN_PROGRESS, details)
        a = self._a
        if a.may_reboot is not None:
            await a._app().window(a, self, "reboot")
        if last is not None:
            last()
            self.save()
        self.log("resetting")
        self.board.reset()
        raise SystemExit  # only reached with a fake board
