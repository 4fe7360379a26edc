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
# What one TLS client session takes from the ESP-IDF heap (mbedTLS allocates there, not from the
# GC heap; docs/board-model.md): the 16 KB input record buffer in one block (16,717 bytes with
# mbedTLS's overhead), and at the handshake's peak ~30 KB in all with an ECDSA P-256 chain (that
# buffer, the 4 KB output buffer, certificates, key exchange): 32 KB with a margin.
_TLS_BLOCK = const(16717)
_TLS_PEAK = const(32768)
# Free IDF heap that must remain beside a second session's peak for the agent to keep MQTT open
# during a download (a board with PSRAM; a plain ESP32 never has it).
_SPARE = const(65536)
# GC heap a session's objects take (the SSLContext, the socket, the response): 4 KB.
_TLS_GC = const(4096)

# mbedTLS's "allocation failed" codes (high-level: SSL, X509, PK, ECP, MD, CIPHER; low-level:
# MPI, ASN1), which the firmware raises as OSError(code) from a handshake short of memory.
_NOMEM_HI = (0x7F00, 0x2880, 0x3F80, 0x4D80, 0x5180, 0x6180)
_NOMEM_LO = (0x10, 0x6A)


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

    def jitter(self, ms):
        # A retry's wait for a backoff of ms: half of it, plus up to the other half at random,
        # so that devices that failed together do not retry together (agent, link, downloads).
        return ms // 2 + self.rand(ms // 2 + 1)

    def reset(self):
        import machine

        machine.reset()

    # ---- memory

    def mem(self):
        # -> (GC heap free, IDF heap free, its largest free block) after a collection, as the
        # firmware reports them; the IDF figures are None on a port without idf_heap_info.
        import gc

        gc.collect()
        try:
            import esp32

            regions = esp32.idf_heap_info(esp32.HEAP_DATA)
        except (ImportError, AttributeError):
            return gc.mem_free(), None, None
        if not regions:  # no figures (the simulated board without a memory model): unknown
            return gc.mem_free(), None, None
        free = big = 0
        for r in regions:
            free += r[1]
            big = max(big, r[2])
        return gc.mem_free(), free, big

    def tls_room(self, spare=False):
        # None when one more TLS session fits in the IDF heap now (with spare: and 64 KB would
        # remain beside it), else why not, naming memory.
        g, free, big = self.mem()
        if g < _TLS_GC:  # on ESP32 gc.mem_free() counts what the heap could still grow by
            return "out of memory for a TLS session: %d KB of GC heap free" % (g >> 10)
        if free is None:
            return None
        need = _TLS_PEAK + (_SPARE if spare else 0)
        if free >= need and big >= _TLS_BLOCK:
            return None
        return (
            "out of memory for a TLS session: %d KB of IDF heap free (largest %d KB), needs %d"
            % (free >> 10, big >> 10, need >> 10)
        )

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

    # ---- firmware slots: iotjobs.slot.Slot objects (that module is loaded with the first one)

    def running_slot(self):
        import esp32
        from iotjobs.slot import Slot

        return Slot(esp32.Partition(esp32.Partition.RUNNING))  # type: ignore[arg-type]

    def update_slot(self, label=None):
        # The slot an update goes into: the one after the running slot, or the one labelled
        # label (what a job persisted, across resets).
        import esp32
        from iotjobs.slot import Slot

        if label is None:
            p = esp32.Partition(esp32.Partition.RUNNING)  # type: ignore[arg-type]
            return Slot(p.get_next_update())
        return Slot(esp32.Partition(label))

    def firmware_version(self):
        # The version string of the running image's app descriptor (what `esptool image-info`
        # shows); "unknown" for an image without one.
        import esp32

        try:
            p = esp32.Partition(esp32.Partition.RUNNING)  # type: ignore[arg-type]
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


def nomem(e):
    # Whether opening a session failed for want of memory: MemoryError (GC heap), ENOMEM (no
    # room for the record buffers) or an mbedTLS allocation failure in the handshake.
    if isinstance(e, MemoryError):
        return True
    c = e.args[0] if e.args and isinstance(e.args[0], int) else 0
    if c == 12:
        return True
    c = -c if c < 0 else 0
    return c & 0xFF80 in _NOMEM_HI or c & 0x7F in _NOMEM_LO


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


def read(path):
    # A file's bytes (certificates, keys): the one reader the library has.
    with open(path, "rb") as f:
        return f.read()
