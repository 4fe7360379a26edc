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
elif mode in ("wait", "wait-poller"):
    # Transport.wait() under asyncio, what the agent awaits between two reads: it lasts its
    # time when nothing comes, allocates the same for 10 ms as for 300 ms (nothing per pass of
    # asyncio's poller), ends when a message comes, wake() is called or a ping is due, and the
    # guard never polls the TLS socket meanwhile (the wait asks it with a non-blocking read,
    # and the read finds the message's bytes already in mbedTLS).
    # "wait-poller": the same through asyncio's poller (what a board uses; the Unix port
    # asks _Wake from the run queue instead, transport._TICKED).
    import asyncio
    import gc

    from iotjobs import transport

    transport._TICKED = mode == "wait"
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

    async def waker():
        await asyncio.sleep_ms(50)
        t.wake()

    spins = [0, True]

    async def spinner():  # another task that yields in a loop, as the application may
        while spins[1]:
            spins[0] += 1
            await asyncio.sleep_ms(0)

    async def main():
        asyncio.create_task(spinner())
        t0 = time.ticks_ms()
        await t.wait(200)
        spins[1] = False
        print("IDLE-WAIT-MS", time.ticks_diff(time.ticks_ms(), t0), "got", len(got))
        print("SPINNER-YIELDS", spins[0])
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
        t.publish(topic, b"ping")
        t0 = time.ticks_ms()
        await t.wait(20000)
        dt = time.ticks_diff(time.ticks_ms(), t0)
        while t.poll(0):
            pass
        print("MESSAGE-WOKE", dt < 20000, "got", len(got))
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
