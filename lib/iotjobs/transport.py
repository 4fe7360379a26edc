# MQTT over mutual TLS on top of umqtt.simple, and the connectivity layer around it.
#
# Transport is the protocol layer: it raises on any failure and never retries.
# Link is the connectivity layer: it reconnects with exponential backoff and full jitter and
# lets its owner resubscribe after every new connection.
#
# Under asyncio (the agent is a task in the application): poll(0) never waits for a message;
# the agent waits with `await t.wait(ms)`, which yields to the event loop until the socket has
# a byte, wake() was called or ms passed (_Wake); Link.ensure() waits out its backoff with
# asyncio.sleep_ms. What still holds the loop: the TCP connect and TLS handshake of a new
# session, and reading the rest of a packet whose first byte has come (bounded by timeout_ms).
#
# umqtt.simple is used as shipped (PyPI 1.3.4 on the Unix port, the copy frozen into official
# ESP32 firmware on a board), so everything here goes through what every version has:
# MQTTClient(..., ssl=True, ssl_params=...), connect(), subscribe(), publish(qos=0),
# wait_msg(), ping(), and the `sock` attribute.
import asyncio
import io
import sys
import time

from micropython import const

_ETIMEDOUT = const(110)
_ENOTCONN = const(107)
_POLLIN = const(1)
_POLL_BAD = const(0x18)  # POLLHUP | POLLERR
_WBUF = const(512)  # one outgoing packet gathered here (a Jobs update fits)
_DRAIN = const(256)  # the chunk a message too large to hold is drained through
_DRAIN_MIN = const(64)  # smaller reads (headers, lengths) are never dropped
MAX_MSG = const(131072)  # AWS IoT's largest MQTT message
# The Unix port's poller (select.poll built with MICROPY_PY_SELECT_POSIX_OPTIMISATIONS) sleeps
# 1 ms on every pass while a stream without a file descriptor (_Wake, as a TLS socket) is in
# it, even a pass with another task ready: each yield of every task would cost 1 ms. There
# Transport.wait parks the task on the file descriptor of the TCP socket under TLS instead
# (_fdwait, C in the simulated boards' Unix ports: firmware/board/_board/fdwait.c; its import
# and its waits take no GC heap, as a board's poller). A board's poller (ESP32) asks _Wake
# once per pass, sleeps only when no task is due, and is the one used there.
_TICKED = sys.platform in ("linux", "darwin")


class _Guard:
    # Stands in for the TLS socket inside umqtt.simple so that no read blocks forever.
    # Why: umqtt.simple's wait_msg() calls sock.setblocking(True) after every read, which on
    # ESP32 also clears any socket timeout, and the native TLS socket has no settimeout().
    # So the guard polls before each read, and remembers when bytes last arrived (the
    # keepalive check needs that, since umqtt.simple swallows PINGRESP).
    # Writes: umqtt.simple writes one packet as up to four small writes (header, topic
    # length, topic, payload); Nagle then holds the later ones until the broker's delayed
    # ACK (~40 ms). The guard gathers one packet (its length is in its fixed header) in one
    # preallocated buffer and sends it in one write; a larger packet goes out as it comes.
    # A read the device cannot hold (longer than limit, or MemoryError allocating it) is
    # drained from the socket through one small preallocated buffer and returns b"";
    # `dropped` then says how many bytes were thrown away (Transport tells its owner).
    def __init__(self, sock, timeout_ms, limit):
        import select

        self._s = sock
        self._t = timeout_ms
        self._limit = limit
        self._blocking = True
        self._poll = select.poll()
        self._poll.register(sock, _POLLIN)
        self._poll.ipoll(0)  # ipoll allocates its result tuple on its first call: now
        self._w = bytearray(_WBUF)
        self._wv = memoryview(self._w)
        self._wn = 0  # bytes of the current packet in _w
        self._left = 0  # bytes of the current packet still to come
        self._chunk = bytearray(_DRAIN)
        self._pend = bytearray(1)  # a packet's first byte, read by ready(0)
        self._has = False
        self.dropped = 0
        self._got = 0
        self.rx_ticks = time.ticks_ms()

    def ready(self, timeout_ms):
        # ipoll: no list per call, so an idle poll allocates nothing. ready(0), what the agent
        # calls between two yields to the event loop, is a non-blocking read of one byte
        # instead (kept for the next read): the Unix port polls a TLS socket with a 1 ms sleep.
        if self._has:
            return True
        if not timeout_ms:
            s = self._s
            s.setblocking(False)
            try:
                n = s.readinto(self._pend, 1)
            finally:
                s.setblocking(True)
            if n:
                self._has = True
                self.rx_ticks = time.ticks_ms()
                return True
            if n == 0:
                raise OSError(_ENOTCONN)  # closed
            return False
        for _, ev in self._poll.ipoll(timeout_ms):
            if ev & _POLL_BAD and not ev & _POLLIN:
                raise OSError(_ENOTCONN)
            return True
        return False

    def setblocking(self, flag):
        self._blocking = flag

    def read(self, n):
        if not self._blocking and not self.ready(0):
            return None
        if self._has:  # ready(0) read the packet's first byte
            self._has = False
            b = bytes(self._pend)
            return b if n == 1 else b + self.read(n - 1)
        if n >= _DRAIN_MIN:
            if n > self._limit:
                return self._drain(n, 0)
            try:
                return self._read(n)
            except MemoryError:
                # Nothing of it was kept: the parts read so far are garbage now.
                return self._drain(n, self._got)
        return self._read(n)

    def _drain(self, n, got):
        self.dropped += n
        buf = self._chunk
        while got < n:
            if not self.ready(self._t):
                raise OSError(_ETIMEDOUT)
            k = n - got
            k = self._s.readinto(buf, k if k < _DRAIN else _DRAIN)
            if not k:
                raise OSError(_ENOTCONN)
            got += k
            self.rx_ticks = time.ticks_ms()
        return b""

    def _read(self, n):
        parts = None
        got = self._got = 0
        s = self._s
        while True:
            # recv() is one underlying read: it returns what is there, where read() would block
            # until all n bytes came. Non-blocking first, and a poll only when nothing is
            # there: the Unix port's poll of a TLS socket sleeps 1 ms even with the bytes
            # already buffered (ESP32's returns at once), ~1 ms per umqtt.simple read.
            s.setblocking(False)
            try:
                data = s.recv(n - got)
            finally:
                s.setblocking(True)
            if data is None:
                if not self.ready(self._t):
                    raise OSError(_ETIMEDOUT)
                continue
            if not data:
                if got:
                    raise OSError(_ENOTCONN)  # closed in the middle of a packet
                return b""  # orderly close: umqtt.simple turns b"" into OSError(-1)
            self.rx_ticks = time.ticks_ms()
            got += len(data)
            self._got = got  # consumed from the socket, whatever happens next
            if got == n and parts is None:
                return data
            if parts is None:
                parts = []
            parts.append(data)
            if got == n:
                return b"".join(parts)

    def write(self, buf, n=None):
        if isinstance(buf, str):  # a topic given as str: its bytes (ASCII, as MQTT counts it)
            buf = buf.encode()
        if n is None:
            n = len(buf)
        if not self._left:  # a new packet: its length from its fixed header
            size = _packet_size(buf, n)
            if size is None:  # not a header we can read: pass it through
                return self._send(buf, n)
            self._left = size
        self._left -= n
        w = self._wn
        if w + n > _WBUF:  # larger than the buffer: what is gathered, then this, as they come
            self._flush()
            self._send(buf, n)
        elif n <= 16:  # headers: byte by byte, no slice object
            b = self._w
            i = 0
            while i < n:
                b[w + i] = buf[i]
                i += 1
            self._wn = w + n
        else:
            self._wv[w : w + n] = buf if n == len(buf) else memoryview(buf)[:n]
            self._wn = w + n
        if self._left <= 0:
            self._left = 0
            self._flush()
        return n

    def _flush(self):
        if self._wn:
            self._send(self._w, self._wn)
            self._wn = 0

    def _send(self, buf, n):
        # All n bytes (the socket blocks); write(buf, off, len): no slice allocated.
        off = 0
        while off < n:
            off += self._s.write(buf, off, n - off)
        return n

    def close(self):
        try:
            self._poll.unregister(self._s)
        except Exception:
            pass
        self._s.close()


class _Wake(io.IOBase):
    # What Transport.wait() awaits: asyncio's poller asks this stream (ioctl, MP_STREAM_POLL,
    # as it asks a socket) whether its task may run, and it may when set() was called (the
    # application queued a message), the socket has a byte or the deadline passed. One
    # waiter at a time (the agent's task). Why not the TLS socket itself in asyncio's poller
    # (what asyncio.StreamReader awaits): that takes no deadline, and a deadline beside it
    # (asyncio.wait_for_ms) costs two tasks per wait; this costs one generator (wait()).
    # The socket is asked as the guard's ready(0) asks it (a non-blocking read of one byte,
    # kept for the next read): never a poll of a TLS socket that already holds bytes. The
    # poller asks each pass of its loop: every FreeRTOS tick on ESP32 while nothing else runs,
    # the same wake-up a socket in it would get (the Unix port: see _TICKED).
    def __init__(self, guard):
        self.state = 0
        self._g = guard
        self.until = time.ticks_ms()

    def ioctl(self, req, flags):
        if req != 3:  # MP_STREAM_POLL, the only request asyncio makes
            return -1
        g = self._g
        if self.state or g is None:  # None: closed (a closed TLS socket must not be touched)
            return flags
        try:
            if g.ready(0):
                return flags
        except Exception:  # closed or broken: the reader finds out (an exception here would
            return flags  # end the event loop)
        return flags if time.ticks_diff(time.ticks_ms(), self.until) >= 0 else 0

    def set(self):
        self.state = 1

    def wait(self):
        # Awaited (a generator is a coroutine to MicroPython's asyncio): parks the task in
        # asyncio's poller on this stream, as asyncio.ThreadSafeFlag.wait does; not that class
        # itself, whose module (asyncio.event, Event beside it) would stay in the GC heap of
        # every idle agent (esp32-plain: 0.6-0.8 KB more live at every job's peak,
        # docs/memory.md section 5).
        if not self.state:
            yield asyncio.core._io_queue.queue_read(self)  # type: ignore[attr-defined]  # not in the stubs
        self.state = 0


def _packet_size(buf, n):
    # Whole length of the MQTT packet that starts buf: 1 + its Remaining Length field + the
    # length it gives; None when buf[:n] ends inside that field.
    size = 0
    shift = 0
    i = 1
    while i < n:
        d = buf[i]
        size |= (d & 0x7F) << shift
        i += 1
        if not d & 0x80:
            return i + size
        shift += 7
    return None


class Transport:
    # max_msg: the longest MQTT read the device tries to hold (AWS IoT caps a message at
    # 128 KB); longer ones, and any it has no memory for, are drained and reported to the
    # oversize callback as (topic, bytes dropped) instead of the message callback.
    def __init__(
        self, client_id, host, port, ssl_params, keepalive_s=60, timeout_ms=10000, max_msg=MAX_MSG
    ):
        self.client_id = client_id
        self.host = host
        self.port = port
        self._ssl_params = ssl_params
        self._keepalive_ms = keepalive_s * 1000
        self._timeout_ms = timeout_ms
        self._max_msg = max_msg
        self._cb = None
        self._big = None
        self._c = None
        self._sock = None
        self._wake = None  # _Wake, for wait()
        self._tx_ticks = time.ticks_ms()
        self._ping_ticks = None
        self.hold = None  # Link.hold, for connect()

    def set_callback(self, fn, oversize=None):
        self._cb = fn
        self._big = oversize

    def _deliver(self, topic, msg):
        s = self._sock
        n = 0
        if s is not None:
            n = s.dropped
            s.dropped = 0
        if n:
            if self._big is not None:
                self._big(topic, n)
        elif self._cb is not None:
            self._cb(topic, msg)

    def connect(self):
        from umqtt import simple

        # ssl_params may be a function that reads the PEMs: then they are read for each
        # connection and not kept as text between connections.
        p = self._ssl_params
        p = p() if callable(p) else p
        if self.hold is not None:
            # The block kept for the session's objects (Link.hold), freed only now that the
            # PEMs are read, and collected at once: the SSLContext finds it whole instead of
            # growing the GC heap into the IDF heap the session needs itself.
            import gc

            self.hold = None
            gc.collect()
        c = simple.MQTTClient(
            self.client_id,
            self.host,
            self.port,
            keepalive=self._keepalive_ms // 1000,
            ssl=True,
            ssl_params=p,
        )
        c.set_callback(self._deliver)
        tap = _fdwait = None
        if _TICKED:  # the Unix port: the TCP socket under TLS, seen as umqtt.simple makes it
            # C in the simulated boards' ports (a board has none): its import takes no GC heap.
            # A Unix port without it waits through asyncio's poller, as a board does (slower
            # there: 1 ms passes, see above).
            try:
                import _fdwait  # type: ignore[import-not-found,no-redef]  # not in the ESP32 stubs
            except ImportError:
                pass
            else:
                tap = simple.socket = _fdwait.Tap(simple.socket)  # type: ignore[attr-defined]  # not in the stubs
        try:
            # umqtt.simple >= 1.5 bounds the connect itself; older ones (1.3.4, what PyPI has)
            # take no timeout and are bounded by the watchdog on a board.
            c.connect(True, self._timeout_ms // 1000)
        except TypeError:
            c.connect(True)
        except Exception:
            _close(c.sock)
            raise
        finally:
            if tap is not None:
                simple.socket = tap.m  # type: ignore[attr-defined]  # not in the stubs
        c.ssl_params = None  # parsed into the TLS session by now
        self._sock = _Guard(c.sock, self._timeout_ms, self._max_msg)
        fd = tap.sock if tap is not None else None
        if hasattr(fd, "fileno"):
            try:
                fd.setsockopt(6, 1, 1)  # type: ignore[union-attr]  # IPPROTO_TCP, TCP_NODELAY
            except OSError:
                pass
            self._wake = _fdwait.Parked(self._sock, fd)  # type: ignore[attr-defined]  # set with tap
        else:  # a board (or a umqtt.simple whose socket Tap did not see: asyncio's poller)
            self._wake = _Wake(self._sock)
        c.sock = self._sock
        self._c = c
        self._tx_ticks = time.ticks_ms()
        self._ping_ticks = None

    def subscribe(self, topic):
        self._need().subscribe(topic)
        self._tx_ticks = time.ticks_ms()

    def publish(self, topic, payload):
        self._need().publish(topic, payload)
        self._tx_ticks = time.ticks_ms()

    def poll(self, timeout_ms):
        # Waits up to timeout_ms for one message and dispatches it; keeps the link alive.
        c = self._need()
        s = self._sock
        if s is None:
            raise OSError(_ENOTCONN)
        self._keepalive(c, s)
        if not s.ready(timeout_ms):
            self._keepalive(c, s)
            return False
        c.wait_msg()
        self._ping_ticks = None
        return True

    def wait(self, ms):
        # An awaitable: yields to the event loop until the socket has a byte (poll(0) then
        # reads the message), wake() is called, or ms passed, or sooner when the keepalive
        # has something to do (a ping to send, a ping's reply overdue: poll(0) does it); at
        # once when the transport is closed. Allocates one generator (the wait itself),
        # nothing per pass of the poller.
        w = self._wake
        if w is None or self._c is None:
            return asyncio.sleep_ms(0)
        now = time.ticks_ms()
        if self._ping_ticks is None:
            due = self._keepalive_ms // 2 - time.ticks_diff(now, self._tx_ticks)
        else:
            due = self._timeout_ms - time.ticks_diff(now, self._ping_ticks) + 1
        if due < ms:
            ms = due if due > 0 else 0
        w.until = time.ticks_add(now, ms)
        return w.wait() if w.__class__ is _Wake else w  # _fdwait.Parked: awaitable itself

    def wake(self):
        # Ends a wait() under way (or makes the next one return at once).
        w = self._wake
        if w is not None:
            w.set()

    def _keepalive(self, c, s):
        now = time.ticks_ms()
        if self._ping_ticks is not None:
            # A ping is out: no byte at all since then for too long means a dead link.
            if time.ticks_diff(s.rx_ticks, self._ping_ticks) >= 0:
                self._ping_ticks = None
            elif time.ticks_diff(now, self._ping_ticks) > self._timeout_ms:
                raise OSError(_ETIMEDOUT)
            return
        if time.ticks_diff(now, self._tx_ticks) >= self._keepalive_ms // 2:
            c.ping()
            self._tx_ticks = now
            self._ping_ticks = now

    def _need(self):
        if self._c is None:
            raise OSError(_ENOTCONN)
        return self._c

    # For a reader of its own (iotjobs.stream reads stream blocks off the socket without
    # allocating). It reads whole packets only, so that umqtt.simple finds the socket at a
    # packet boundary again; seen() after each read keeps the keepalive's clock.
    def raw(self):
        # The TLS socket under the guard.
        return self._g()._s

    def seen(self):
        # Allocates nothing (no nested call: a second frame would not fit a locked heap here).
        s = self._sock
        if s is not None:
            s.rx_ticks = time.ticks_ms()

    def send(self, packet):
        # A whole MQTT packet in one write (umqtt.simple writes one in four).
        self._g().write(packet)
        self._tx_ticks = time.ticks_ms()

    def deliver(self, topic, msg, dropped=0):
        # A message that reader took off the socket, to the owner's callbacks as if
        # umqtt.simple had read it; dropped: its length when it was drained unread.
        if dropped:
            self._g().dropped = dropped
        self._deliver(topic, msg)

    def _g(self):
        s = self._sock
        if s is None or self._c is None:
            raise OSError(_ENOTCONN)
        return s

    def fits(self, n):
        # Whether a message of n bytes is one this transport would hold.
        return n <= self._max_msg

    def close(self):
        w = self._wake
        if w is not None:
            w._g = None
            w.set()
        c, self._c = self._c, None
        if c is not None:
            try:
                c.disconnect()
            except Exception:
                _close(c.sock)


class Link:
    def __init__(
        self,
        factory,
        on_connect,
        board=None,
        backoff_min_ms=1000,
        backoff_max_ms=640000,
        log=None,
    ):
        self._factory = factory
        self._on_connect = on_connect
        self._board = board
        self._min = backoff_min_ms
        self._max = backoff_max_ms
        self._log = log
        self.t = None
        self.attempts = 0
        self.connects = 0
        self.paused = False
        self.hold = None  # a block kept for the first session's objects (iotjobs.app), dropped
        self.on_fail = None  # on_fail(e) after each failed connect (the agent's memory check)

    def set_on_connect(self, fn):
        self._on_connect = fn

    async def ensure(self, once=False):
        # Returns a connected Transport, trying until it gets one (and ends a pause); the
        # backoff between tries yields to the event loop. once: one try, None if it failed.
        self.paused = False
        backoff = self._min
        while self.t is None:
            t = self._factory()
            t.hold = self.hold
            self.hold = None
            try:
                self.attempts += 1
                t.connect()
                self._on_connect(t)
                self.t = t
                self.connects += 1
            except Exception as e:  # OSError, MQTTException, TLS errors: all mean "try again"
                t.close()
                if self.on_fail is not None:
                    self.on_fail(e)  # may reset the board
                wait = None if once else self._jitter(backoff)  # once: the caller tries next
                if self._log:
                    why = "out of memory" if isinstance(e, MemoryError) else "%r" % (e,)
                    more = "" if wait is None else ", retry in %d ms" % wait
                    self._log("link: connect failed (%s)%s" % (why, more))
                if wait is None:
                    return None
                await self._sleep(wait)
                backoff = min(backoff * 2, self._max)
        return self.t

    def pause(self):
        # Closes the session (its TLS memory goes back to the heap) without calling it a
        # failure; the next ensure() connects again. For one TLS session at a time.
        t, self.t = self.t, None
        if t is not None:
            t.close()
        self.paused = True

    def drop(self, why=None):
        if self.t is not None:
            if self._log:
                self._log("link: dropped (%r)" % (why,))
            self.t.close()
            self.t = None

    def _jitter(self, ms):
        if self._board is not None:
            return self._board.jitter(ms)
        return ms

    async def _sleep(self, ms):
        b = self._board
        while ms > 0:
            if b is not None:
                b.feed()
            n = ms if ms < 500 else 500
            await asyncio.sleep_ms(n)
            ms -= n


def _close(sock):
    try:
        if sock is not None:
            sock.close()
    except Exception:
        pass
