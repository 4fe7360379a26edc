"""The simulated board's memory profiles (docs/board-model.md; the figures' derivation is in
docs/memory.md). One owner: the fixtures, ``jobsctl device run --profile``, the demo and the
benches take a profile by name from here.

A profile is the first GC heap area (``-X heapsize``) and the ESP-IDF heap regions the board's
port caps mbedTLS and the GC heap's growth to (``SIM_IDF_HEAP``, ``SIM_IDF_PSRAM``, read by
``firmware/board/_board/board.c``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import JobsctlError

KB = 1024


@dataclass(frozen=True)
class Profile:
    name: str
    gc_first: int  # bytes: the first GC heap area (MICROPY_GC_INITIAL_HEAP_SIZE)
    internal: tuple[int, ...]  # bytes free per internal-RAM IDF region, Wi-Fi connected
    psram: int  # bytes free in PSRAM (0: none)
    summary: str

    @property
    def idf_total(self) -> int:
        return sum(self.internal) + self.psram

    @property
    def heapsize(self) -> str:
        return f"{self.gc_first // KB}k"

    def env(self) -> dict[str, str]:
        """The environment variables that select this profile in the board's port."""
        env = {"SIM_IDF_HEAP": ",".join(str(n) for n in self.internal)}
        if self.psram:
            env["SIM_IDF_PSRAM"] = str(self.psram)
        return env


PROFILES = {
    p.name: p
    for p in (
        Profile(
            "esp32-plain",
            56 * KB,
            (14 * KB, 82 * KB),
            0,
            "ESP32-WROOM, no PSRAM, MicroPython 1.25 stock firmware, Wi-Fi connected: "
            "96 KB of IDF heap beside the first 56 KB GC area",
        ),
        Profile(
            "esp32-tight",
            56 * KB,
            (14 * KB, 63 * KB),
            0,
            "the same board with less left after Wi-Fi (the IDF 5.0 layout of MicroPython "
            "PR 12952): 77 KB of IDF heap",
        ),
        Profile(
            "esp32-psram",
            56 * KB,
            (14 * KB, 138 * KB),
            4 * 1024 * KB - 64 * KB,
            "ESP32-WROVER with 4 MB PSRAM: the GC heap and blocks over 8 KB in PSRAM first",
        ),
    )
}
# The profile simulated boards, the demo, the benches and the end-to-end tests use unless told
# otherwise: esp32-plain, the board this project targets. Every job fits it since the device
# library holds one TLS session at a time (MQTT closed during a download); OTA and bundle jobs
# still grow the GC heap into the IDF heap (README, Memory).
DEFAULT = "esp32-plain"


def profile(name: str) -> Profile:
    """The profile called ``name``; a clear error naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise JobsctlError(f"no board profile {name!r} (known: {known})") from None
