"""Delta OTA patches: detools *sequential* (bsdiff) patches the device applies while streaming.

The device's decoder (``lib/iotjobs/delta.py``) reads compression ``none`` or ``heatshrink``
with a window of at most 2**12 bytes (it keeps the window in RAM: 2**window_bits bytes) and a
lookahead smaller than the window. The defaults here, window 2**10 and lookahead 2**7, cost the
board 1 KB and were chosen on the firmware pairs of ``make bench`` (``bench/results.md``).
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from typing import Any

from .checkout import LIB, require
from .errors import JobsctlError

COMPRESSIONS = ("heatshrink", "none")
WINDOW_BITS = 10
LOOKAHEAD_BITS = 7
DEVICE = LIB / "iotjobs" / "delta.py"
MIN_WINDOW_BITS = 4  # heatshrink's own limits
MIN_LOOKAHEAD_BITS = 3


def device_max_window_bits() -> int:
    """The device decoder's limit (``_MAX_WBITS`` in lib/iotjobs/delta.py: its one owner)."""
    require("a delta patch (the device decoder's window limit is in lib/iotjobs/delta.py)")
    m = re.search(r"^_MAX_WBITS = const\((\d+)\)", DEVICE.read_text(), re.M)
    if m is None:  # pragma: no cover - the device module always states it
        raise JobsctlError(f"{DEVICE}: no _MAX_WBITS")
    return int(m.group(1))


@dataclass(frozen=True)
class Patch:
    data: bytes
    base_size: int
    base_sha256: str
    size: int  # the new image's

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def document(self, url: str) -> dict[str, Any]:
        """The ``delta`` object of an OTA job document (the patch served at ``url``)."""
        return {
            "url": url,
            "size": len(self.data),
            "sha256": self.sha256,
            "base_size": self.base_size,
            "base_sha256": self.base_sha256,
        }


def create(
    old: bytes,
    new: bytes,
    compression: str = "heatshrink",
    window_bits: int = WINDOW_BITS,
    lookahead_bits: int = LOOKAHEAD_BITS,
) -> Patch:
    """A sequential detools patch from ``old`` to ``new``, checked by applying it (detools)."""
    import detools

    if compression not in COMPRESSIONS:
        raise JobsctlError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    top = device_max_window_bits()
    if compression == "heatshrink" and not (
        MIN_WINDOW_BITS <= window_bits <= top and MIN_LOOKAHEAD_BITS <= lookahead_bits < window_bits
    ):
        raise JobsctlError(
            f"heatshrink needs window bits {MIN_WINDOW_BITS}-{top} (the device's limit) and "
            f"lookahead bits from {MIN_LOOKAHEAD_BITS} to below the window bits"
        )
    if not old or not new:
        raise JobsctlError("both images must be non-empty")
    out = io.BytesIO()
    detools.create_patch(
        io.BytesIO(old),
        io.BytesIO(new),
        out,
        compression=compression,
        patch_type="sequential",
        algorithm="bsdiff",
        heatshrink_window_sz2=window_bits,
        heatshrink_lookahead_sz2=lookahead_bits,
    )
    data = out.getvalue()
    check = io.BytesIO()
    detools.apply_patch(io.BytesIO(old), io.BytesIO(data), check)
    if check.getvalue() != new:  # pragma: no cover - a detools bug, never seen
        raise JobsctlError("detools made a patch that does not rebuild the new image")
    return Patch(data, len(old), hashlib.sha256(old).hexdigest(), len(new))


def object_key(patch: Patch, new: bytes) -> str:
    """Content-addressed, like otajob.object_key: base and target hashes name the patch."""
    return f"ota/delta-{patch.base_sha256[:16]}-{hashlib.sha256(new).hexdigest()[:16]}.patch"
