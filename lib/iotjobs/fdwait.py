# Transport.wait on the Unix port (transport._TICKED; never loaded on a board).
#
# That port's poller (select.poll with MICROPY_PY_SELECT_POSIX_OPTIMISATIONS) sleeps 1 ms on
# every pass while a stream without a file descriptor (transport._Wake, a TLS socket) is in
# it, even a pass with another task ready. A file descriptor costs nothing there: poll()
# sleeps in the kernel until it has bytes. So the waiting task parks in asyncio's poller on
# the TCP socket under TLS (Tap finds it, the TLS socket does not give its descriptor), and:
# - bytes mbedTLS already holds are not seen by a poll of the descriptor: before it parks,
#   the guard is asked as _Wake.ioctl asks it (a non-blocking read of one byte, kept);
# - the deadline: _timer, one task per connection queued for it while a wait is parked (not
#   a second task per wait, as asyncio.wait_for_ms makes), releases the wait;
# - set() (the application queued a message, or Transport.close) releases it at once.
# Allocation: one awaitable reused (as asyncio.sleep_ms's), asyncio's poller entry made once
# and left registered after a wait that set() or the deadline ended; a wait the socket ends
# has asyncio take the entry out, the next one puts it in again.
import asyncio
import time

from iotjobs.transport import _Wake


class Tap:
    # umqtt.simple's `socket` module as its connect() sees it: the socket it makes is kept.
    def __init__(self, m):
        self.m = m
        self.sock = None

    def socket(self, *args):
        s = self.sock = self.m.socket(*args)
        return s

    def __getattr__(self, name):
        return getattr(self.m, name)


class Parked(_Wake):
    # What Transport.wait returns (until set), awaited: __iter__ begins a wait.
    def __init__(self, guard, fd):
        super().__init__(guard)
        self._e = [None, None, fd]  # its entry in asyncio's IOQueue.map: [task parked, -, fd]
        self._k = id(fd)  # its key there (on a 32-bit port an int object: made once)
        self._on = False
        self._stop = StopIteration()
        core = asyncio.core  # type: ignore[attr-defined]  # not in the stubs
        self._tm = asyncio.create_task(_timer(self, core))  # queued now: it runs, waits
        self._q = core._task_queue  # the run queue _timer is in, None while it is in none

    def __iter__(self):
        self._on = False
        return self

    def __next__(self):
        if not self._on:
            self._on = True
            if not self.ioctl(3, 1):  # nothing held, not set, deadline not passed
                self._park(asyncio.core)  # type: ignore[attr-defined]  # not in the stubs
                return None  # a yield: the task waits
        self._off()
        self.state = 0
        e = self._stop
        e.__traceback__ = None
        raise e

    def _park(self, core):
        io = core._io_queue
        e = self._e
        if io.map.get(self._k) is not e:  # the first wait, or the socket ended the last one
            io.map[self._k] = e
            io.poller.register(e[2], 1)  # POLLIN
        t = e[0] = core.cur_task
        t.data = io  # as IOQueue._enqueue links it: Task.cancel takes it out of there
        self._off()
        q = self._q = core._task_queue
        q.push(self._tm, self.until)

    def _off(self):
        q = self._q
        if q is not None:
            self._q = None
            q.remove(self._tm)

    def parked(self, core):
        # Whether a task is parked here now (not pushed by the poller or cancelled out of it).
        e = self._e
        return e[0] is not None and core._io_queue.map.get(self._k) is e

    def set(self):
        # Ends a parked wait (its task to the run queue). Transport.close's too (guard None):
        # then the socket leaves asyncio's poller before it is closed (its descriptor may be
        # reused) and _timer leaves the run queue.
        self.state = 1
        core = asyncio.core  # type: ignore[attr-defined]  # not in the stubs
        e = self._e
        if self.parked(core):
            core._task_queue.push(e[0])
            e[0] = None
        if self._g is None:
            if core._io_queue.map.get(self._k) is e:
                core._io_queue._dequeue(e[2])
            self._off()


def _timer(w, core):
    # Ends w's parked wait at its deadline; queued only while a wait is parked (w._q). A
    # generator: a coroutine to MicroPython's asyncio.
    while True:
        w._q = None
        if w.parked(core):
            if time.ticks_diff(w.until, time.ticks_ms()) > 0:  # early (the poller first)
                w._q = q = core._task_queue
                q.push(core.cur_task, w.until)
            else:
                w.set()
        yield
