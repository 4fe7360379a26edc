# Unix-port stand-in for the parts of MicroPython's `machine` module the agent uses.
#
# reset() ends the process at once with exit status 3, like a hard reset ends everything on a
# board: no finally blocks, no flushing of files left open. The host runner (jobsctl device run)
# starts the process again, which then boots through sim/boardrun.py like a board through its
# bootloader. WDT writes the time of each feed to the file `wdt` in the board folder; the runner
# kills and restarts a board whose watchdog was not fed in time, as the hardware would.
import sys
import time

from micropython import const

_RESET_STATUS = const(3)
_FEED_GAP_MS = const(250)

PWRON_RESET = const(1)
HARD_RESET = const(2)
WDT_RESET = const(3)
DEEPSLEEP_RESET = const(4)
SOFT_RESET = const(5)


# A reset must not allocate, because on a board machine.reset() is firmware and works with a
# full heap: the board's port has _board.reset (writes the memory report, then _exit); another
# port resolves libc's _exit through ffi once, when the module is loaded (boardrun.py loads it at
# power-on, before the application fills the heap).
try:
    from _board import reset as _exit
except ImportError:
    try:
        import ffi

        _exit = ffi.open("libc.so.6").func("v", "_exit", "i")
    except (ImportError, OSError):
        _exit = None


def _exit_now(status):
    if _exit is not None:
        _exit(status)
    sys.exit(status)


def reset():
    sys.stdout.write("machine.reset()\n")
    _exit_now(_RESET_STATUS)


def soft_reset():
    reset()


def reset_cause():
    import os

    return int(os.getenv("SIM_RESET_CAUSE") or PWRON_RESET)


def unique_id():
    import os

    return (os.getenv("SIM_THING") or "sim").encode()


def freq(hz=None):
    return 240000000


def idle():
    pass


class WDT:
    def __init__(self, id=0, timeout=5000):
        self._timeout = timeout
        self._last = None
        with open("wdt", "w") as f:
            f.write("%d\n" % timeout)
        self.feed()

    def feed(self):
        now = time.ticks_ms()
        if self._last is not None and time.ticks_diff(now, self._last) < _FEED_GAP_MS:
            return
        self._last = now
        with open("wdt.fed", "w") as f:
            f.write("%d\n" % self._timeout)
