# The simulated board's power-on: what the ROM and the bootloader do before MicroPython runs
# boot.py and main.py. Run as `micropython sim/boardrun.py` with the board folder as the current
# directory (the board's filesystem root). The bootloader picks the slot to boot (and rolls back
# an unconfirmed image); then boot.py and main.py from the board folder, like the firmware.
import sys


def _run(name):
    try:
        f = open(name)
    except OSError:
        return
    with f:
        code = f.read()
    exec(code, {"__name__": "__main__", "__file__": name})


def _main():
    import os

    if "" in sys.path:
        sys.path.remove("")
    # The port puts this script's folder (sim/) first on the path: the stand-ins for the
    # firmware's built-ins would then load from their .py source into the heap (a board has them
    # in C or frozen, at no heap cost) instead of from the port's frozen modules.
    here = __file__.rpartition("/")[0] or "."
    if sys.path and sys.path[0] == here:
        sys.path.pop(0)
    sys.path.insert(0, "")  # the board's root, as on a board
    # The firmware's built-in modules exist before any application code runs and cost it no heap
    # when used; load the stand-in of the one whose use must never fail (machine.reset()) now.
    try:
        import machine  # noqa: F401
    except ImportError:
        pass
    try:
        import esp32

        esp32._power_on()
    except ImportError:
        pass
    # SIM_GC_THRESHOLD=N (bench.memory --dense): a collection after every N bytes allocated, so
    # that the port's live high-water (docs/memory.md) is sampled densely. Not a board setting.
    n = os.getenv("SIM_GC_THRESHOLD")
    if n:
        import gc

        gc.threshold(int(n))
    # argv[1]: where boot.py and main.py are (default: the board folder itself).
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    _run(root + "/boot.py")
    if not os.getenv("SIM_NO_MAIN"):
        _run(root + "/main.py")


_main()
