# Runs first on every reset: make an interrupted application-file update whole again before
# anything imports the application (see lib/iotjobs/appswap.py).
def _boot():
    try:
        from iotjobs import appswap  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return
    try:
        appswap.recover("app")
    except Exception as e:
        print("E boot: app recovery failed: %r" % (e,))
    # Not needed again before a bundle job imports it: its code is not kept in the heap.
    import sys

    import iotjobs

    del sys.modules["iotjobs.appswap"], iotjobs.appswap


_boot()
del _boot
