# The platform seam: everything the agent needs from the hardware, behind one object.
#
# On a board this uses MicroPython's `network`, `ntptime`, `machine` and `esp32` modules. On the
# Unix port the very same class runs against the stand-ins in sim/, which behave like the
# hardware (file-backed OTA slots with the bootloader's rollback rules, reset = process exit).
# Nothing is touched before a method is called; tests can pass any object with these methods.
import time

from micropython import const

_DESC_OFFSET = const(0x20)  # esp_app_desc_t: after the 24-byte image and 8-byte segment header
_DESC_MAGIC = const(0xABCD5432)
_WIFI_WAIT_MS = const(30000)
_FEED_SLICE_MS = const(500)


class Board:
    def __init__(self, wdt_timeout_ms=0, log=None):
        self._wdt_timeout = wdt_timeout_ms
        self._wdt = None
        self._log = log
        self.self_test = None  # the application's hook: fn(ctx) -> None/True, or False/a reason

    # ---- watchdog and time

    def start_watchdog(self):
        if self._wdt_timeout and self._wdt is None:
            import machine

            self._wdt = machine.WDT(timeout=self._wdt_timeout)

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def ticks_ms(self):
        return time.ticks_ms()

    def sleep_ms(self, ms):
        # Long waits (backoff) are cut in slices so that the watchdog stays fed.
        while ms > 0:
            self.feed()
            n = ms if ms < _FEED_SLICE_MS else _FEED_SLICE_MS
            time.sleep_ms(n)
            ms -= n

    def rand(self, n):
        import random

        return random.getrandbits(30) % n if n > 0 else 0

    def reset(self):
        import machine

        machine.reset()

    # ---- network and clock

    def connect_network(self, ssid=None, password=None):
        # Station mode, waiting (fed) until connected; then the clock, which TLS certificate
        # checks need. A board without Wi-Fi credentials is expected to be on a network already.
        import network

        wlan = network.WLAN(network.STA_IF)
        wlan.active(True)
        if not wlan.isconnected():
            if ssid:
                wlan.connect(ssid, password)
            t0 = time.ticks_ms()
            while not wlan.isconnected():
                if time.ticks_diff(time.ticks_ms(), t0) > _WIFI_WAIT_MS:
                    raise OSError("wifi: not connected after %d ms" % _WIFI_WAIT_MS)
                self.sleep_ms(100)
        import ntptime

        ntptime.settime()

    # ---- firmware slots

    def running_partition(self):
        import esp32

        return esp32.Partition(esp32.Partition.RUNNING)  # type: ignore[arg-type]

    def next_partition(self):
        return self.running_partition().get_next_update()

    def confirm_image(self):
        import esp32

        esp32.Partition.mark_app_valid_cancel_rollback()

    def firmware_version(self):
        # The version string of the running image's app descriptor (what `esptool image-info`
        # shows); "unknown" for an image without one.
        try:
            p = self.running_partition()
        except Exception:
            return "unknown"
        return app_version(p)


def app_version(part):
    # Reads the header and the descriptor's version only (80 bytes, not a whole block).
    buf = bytearray(_DESC_OFFSET + 48)
    part.readblocks(0, buf, 0)
    magic = buf[_DESC_OFFSET] | buf[_DESC_OFFSET + 1] << 8
    magic |= buf[_DESC_OFFSET + 2] << 16 | buf[_DESC_OFFSET + 3] << 24
    if buf[0] != 0xE9 or magic != _DESC_MAGIC:
        return "unknown"
    raw = bytes(buf[_DESC_OFFSET + 16 :])
    end = raw.find(b"\0")
    return (raw if end < 0 else raw[:end]).decode()


def app_secure_version(part):
    # The descriptor's secure_version (anti-rollback counter); 0 without a descriptor.
    buf = bytearray(_DESC_OFFSET + 8)
    part.readblocks(0, buf, 0)
    d = _DESC_OFFSET
    if (
        buf[0] != 0xE9
        or buf[d] | buf[d + 1] << 8 | buf[d + 2] << 16 | buf[d + 3] << 24 != _DESC_MAGIC
    ):
        return 0
    return buf[d + 4] | buf[d + 5] << 8 | buf[d + 6] << 16 | buf[d + 7] << 24
