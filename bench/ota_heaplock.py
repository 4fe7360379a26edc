# What the heap-locked MQTT-stream programs (ota_mqtt_pipeline.py, delta_mqtt_apply.py) share:
# the agent's once-per-window and now-and-then calls wrapped so that each unlocks the heap for
# itself and is counted, and the coroutine run under micropython.heap_lock(). MicroPython code,
# imported from the programs' own folder (the Unix port puts a script's folder on sys.path).
import asyncio

import micropython
from iotjobs import stream

locked = [True]
calls = [0, 0, 0, 0, 0]  # persist, report, pump, request, window


def _unlock(i):
    if locked[0]:
        micropython.heap_unlock()
    calls[i] += 1


def _relock():
    if locked[0]:
        micropython.heap_lock()


_window_of = [None]


def _window(self, t, off, size, buf, slot, h, tail):
    # Not a closure: calling one with more than 5 values allocates their array.
    _unlock(4)
    try:
        return _window_of[0](self, t, off, size, buf, slot, h, tail)
    finally:
        _relock()


def wrap(a, window=False):
    # Fixed arities: a *args wrapper would allocate its tuple before it could unlock.
    # window: Session.window too (one coroutine per window of blocks, made unlocked).
    persist, pump = a.persist, a.pump
    request = stream.Session._request

    def _persist():
        _unlock(0)
        try:
            persist()
        finally:
            _relock()

    async def _report(status, details):  # counted only: there is no such job on the service
        _unlock(1)
        _relock()

    def _pump():
        _unlock(2)
        try:
            return pump()
        finally:
            _relock()

    def _request(self, t, first, n):
        _unlock(3)
        try:
            request(self, t, first, n)
        finally:
            _relock()

    a.persist, a.report, a.pump = _persist, _report, _pump
    stream.Session._request = _request
    if window:
        _window_of[0] = stream.Session.window
        stream.Session.window = _window


async def run(c):
    await asyncio.sleep_ms(0)  # the scheduler's poller makes its result tuple once, now
    if locked[0]:
        micropython.heap_lock()
    try:
        return await c
    finally:
        if locked[0]:
            micropython.heap_unlock()
