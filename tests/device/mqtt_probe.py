# Device-side probe for the transport tests: connects like the agent does and prints one
# result line per step. argv: mode creds_dir|- thing port ca_file server_hostname
import sys
import time

from iotjobs.transport import Transport


def _read(path):
    with open(path, "rb") as f:
        return f.read()


mode, creds, thing, port, ca_file, host = sys.argv[1:7]
import ussl

params = {"cadata": _read(ca_file), "cert_reqs": ussl.CERT_REQUIRED, "server_hostname": host}
if creds != "-":
    params["key"] = _read(creds + "/device.key")
    params["cert"] = _read(creds + "/device.pem")
if mode == "wait-poller":  # as on a board: from the connect on (no _Tap, no socket under TLS)
    from iotjobs import transport as _transport

    _transport._TICKED = False
if mode == "wait-nofdwait":  # a Unix port without the board port's _fdwait: _Wake, as a board
    import builtins

    _import = builtins.__import__

    def _no_fdwait(name, *args):
        if name == "_fdwait":
            raise ImportError("no module named '_fdwait'")
        return _import(name, *args)

    builtins.__import__ = _no_fdwait
t = Transport(thing, "localhost", int(port), params, keepalive_s=2, timeout_ms=3000)
got = []
t.set_callback(lambda topic, msg: got.append((topic, msg)))
try:
    t.connect()
except Exception as e:
    print("CONNECT-FAILED", repr(e))
    sys.exit(0)
print("CONNECTED")
if mode == "roundtrip":
    topic = "$aws/things/%s/jobs/probe" % thing
    t.subscribe(topic)
    t.publish(topic, b"hello")
    deadline = time.ticks_add(time.ticks_ms(), 5000)
    while not got and time.ticks_diff(deadline, time.ticks_ms()) > 0:
        t.poll(500)
    print("RECEIVED", got[0][0].decode(), got[0][1].decode())
elif mode == "foreign-subscribe":
    # mosquitto may grant the SUBSCRIBE and then withhold every message (AWS IoT would drop
    # the connection instead); either way nothing of another thing's may arrive. The test
    # publishes on the foreign topic, then on our own as a sentinel.
    try:
        t.subscribe("$aws/things/someone-else/jobs/notify-next")
    except Exception as e:
        print("SUBSCRIBE-REFUSED", repr(e))
    t.subscribe("$aws/things/%s/jobs/notify-next" % thing)
    print("READY")
    deadline = time.ticks_add(time.ticks_ms(), 10000)
    while not got and time.ticks_diff(deadline, time.ticks_ms()) > 0:
        t.poll(500)
    for topic, msg in got:
        print("RECEIVED", topic.decode(), msg.decode())
elif mode == "hot":
    # The MQTT read path with nothing to read (what the OTA loop's ctx.check() does between
    # messages) under heap_lock, and a message read, with imports counted: none may run.
    import builtins

    import micropython

    topic = "$aws/things/%s/jobs/probe" % thing
    t.subscribe(topic)
    seen = [0]
    real = builtins.__import__

    def counting(name, g=None, lo=None, fromlist=None, level=0):
        seen[0] += 1
        return real(name, g, lo, fromlist, level)

    def idle(n):
        i = 0
        while i < n:
            t.poll(0)
            i += 1

    builtins.__import__ = counting
    micropython.heap_lock()
    try:
        idle(500)
    finally:
        micropython.heap_unlock()
    print("IDLE-POLLS-LOCKED", 500, "imports", seen[0])

    t.publish(topic, b"x" * 300)
    while not got:
        t.poll(1000)
    builtins.__import__ = real
    print("MESSAGE-READ", len(got[0][1]), "imports", seen[0])
elif mode in ("wait", "wait-poller", "wait-nofdwait"):
    # Transport.wait() under asyncio, what the agent awaits between two reads: it lasts its
    # time when nothing comes, allocates the same for 10 ms as for 300 ms (nothing per pass of
    # asyncio's poller), ends when a message comes, wake() is called or a ping is due, and the
    # guard never polls the TLS socket meanwhile (the wait asks it with a non-blocking read,
    # and the read finds the message's bytes already in mbedTLS).
    # "wait": the Unix port's wait, parked in asyncio's poller on the TCP socket under TLS
    # (_fdwait, C in the board port); "wait-poller": through asyncio's poller on _Wake (what a
    # board uses, and the Unix port when that socket is not known).
    import asyncio
    import gc

    core = asyncio.core
    fd = mode == "wait"
    print("PARKED-CLASS", type(t._wake).__name__)
    if fd:
        gc.collect()
        a0 = gc.mem_alloc()
        __import__("_fdwait")
        a1 = gc.mem_alloc()
        try:
            __import__("iotjobs.fdwait")
            in_lib = True
        except ImportError:
            in_lib = False
        print("FDWAIT-IMPORT-ALLOC", a1 - a0, "in-lib", in_lib)
    topic = "$aws/things/%s/jobs/probe" % thing
    t.subscribe(topic)
    polls = [0]

    class _Counted:
        def __init__(self, p):
            self.p = p

        def ipoll(self, ms):
            polls[0] += 1
            return self.p.ipoll(ms)

        def unregister(self, s):
            self.p.unregister(s)

    t._sock._poll = _Counted(t._sock._poll)
    t._keepalive_ms = 600000  # no ping wakes a wait here, but the one the last step asks for

    class _Seen:
        # asyncio's poller as its loop uses it, each ipoll's timeout and what it returned
        # noted (only while `on`).
        def __init__(self, p):
            self.p = p
            self.on = False
            self.calls = []

        def register(self, s, ev):
            self.p.register(s, ev)

        def unregister(self, s):
            self.p.unregister(s)

        def modify(self, s, ev):
            self.p.modify(s, ev)

        def ipoll(self, ms):
            for s, ev in self.p.ipoll(ms):
                if self.on:
                    self.calls.append((ms, s))
                yield s, ev
            if self.on:
                self.calls.append((ms, None))

    seen = _Seen(core._io_queue.poller)
    sleeps = [0]
    real_sleep = asyncio.sleep_ms

    def counted_sleep(ms):
        sleeps[0] += 1
        return real_sleep(ms)

    async def waker():
        await asyncio.sleep_ms(50)
        t.wake()

    spins = [0, True]

    async def spinner():  # another task that yields in a loop, as the application may
        while spins[1]:
            spins[0] += 1
            await asyncio.sleep_ms(0)

    parked = []

    async def looker(me):  # what the waiting task is parked on, seen from another task
        await asyncio.sleep_ms(100)
        parked.extend((e[0] is me, e[2]) for e in core._io_queue.map.values())

    async def main():
        me = core.cur_task
        asyncio.create_task(spinner())
        asyncio.create_task(looker(me))
        t0 = time.ticks_ms()
        await t.wait(200)
        spins[1] = False
        print("IDLE-WAIT-MS", time.ticks_diff(time.ticks_ms(), t0), "got", len(got))
        print("SPINNER-YIELDS", spins[0])
        if fd:
            # Parked in asyncio's poller on the socket under TLS: a file descriptor, the only
            # entry there.
            ok = len(parked) == 1 and parked[0][0] and parked[0][1] is t._wake.sock
            print("PARKED-ON-FD", ok and hasattr(parked[0][1], "fileno"))
        await asyncio.sleep_ms(5)  # the spinner ends (its task's end allocates)
        gc.collect()
        gc.disable()
        a0 = gc.mem_alloc()
        await t.wait(10)
        a1 = gc.mem_alloc()
        await t.wait(300)
        a2 = gc.mem_alloc()
        gc.enable()
        print("ALLOC-10MS", a1 - a0, "ALLOC-300MS", a2 - a1)

        async def sender():  # runs once the wait below has begun: the message comes after
            t.publish(topic, b"ping")

        asyncio.create_task(sender())
        core._io_queue.poller, seen.on = seen, True
        asyncio.sleep_ms = counted_sleep
        t0 = time.ticks_ms()
        await t.wait(20000)
        dt = time.ticks_diff(time.ticks_ms(), t0)
        asyncio.sleep_ms = real_sleep
        core._io_queue.poller, seen.on = seen.p, False
        while t.poll(0):
            pass
        print("MESSAGE-WOKE", dt < 20000, "got", len(got))
        if fd:
            # Woken by the socket's descriptor in poll(), which had slept for all of it: no
            # sleep_ms, no short poll in between.
            short = [ms for ms, _ in seen.calls if 0 < ms < 1000]
            woke = [s for _, s in seen.calls if s is not None]
            by_fd = woke == [t._wake.sock]
            print("MESSAGE-BY-FD", by_fd, "short-polls", len(short), "sleeps", sleeps[0])
        asyncio.create_task(waker())
        t0 = time.ticks_ms()
        await t.wait(20000)
        print("WAKE-WOKE", time.ticks_diff(time.ticks_ms(), t0) < 20000)
        print("GUARD-POLLS", polls[0])
        t._keepalive_ms = 1000  # a ping due in 500 ms: the wait ends for it, poll(0) sends it
        t0 = time.ticks_ms()
        await t.wait(20000)
        dt = time.ticks_diff(time.ticks_ms(), t0)
        tx = t._tx_ticks
        t.poll(0)
        print("KEEPALIVE-WOKE", dt < 20000, "ping sent", t._tx_ticks != tx)
        t._keepalive_ms = 600000
        if t._ping_ticks is not None:  # its reply, unless poll(0) read it already
            await t.wait(20000)
        while t.poll(0):
            pass
        # A waiting task cancelled: nothing of it stays queued, and the next wait lasts.

        async def waiting():
            await t.wait(20000)

        w = asyncio.create_task(waiting())
        await asyncio.sleep_ms(20)
        w.cancel()
        await asyncio.sleep_ms(0)
        stale = [e for e in core._io_queue.map.values() if e[0] is not None]
        t0 = time.ticks_ms()
        await t.wait(30)
        dt = time.ticks_diff(time.ticks_ms(), t0)
        print("CANCEL-CLEAN", w.done() and not stale and dt >= 30)
        # Closed while another task waits: the wait ends, the socket is out of the poller
        # (before it is closed) and nothing is left queued for its deadline.
        w = asyncio.create_task(waiting())
        await asyncio.sleep_ms(20)
        t0 = time.ticks_ms()
        t.close()
        await w
        dt = time.ticks_diff(time.ticks_ms(), t0)
        left = list(core._io_queue.map.values())
        print("CLOSE-WOKE", dt < 20000, "poller", len(left), "timer", getattr(t._wake, "_q", None))

    asyncio.run(main())
elif mode == "keepalive":
    # Idle for three keepalive periods: pings must keep the link up.
    start = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), start) < 6000:
        t.poll(500)
    print("ALIVE", t._ping_ticks is None or "ping-out")
elif mode == "stall":
    # The test freezes the broker after CONNECTED; a poll must give up, not hang.
    sys.stdin.readline()
    start = time.ticks_ms()
    try:
        while True:
            t.poll(500)
    except OSError as e:
        print("DEAD-LINK-DETECTED", e.errno, time.ticks_diff(time.ticks_ms(), start))
t.close()
