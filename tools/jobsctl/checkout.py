"""The project's checkout: the one owner of every path into it (lib/, sim/, build/, the ports).

The device code (``lib/``, ``boot.py``, ``main.py``), the simulated hardware (``sim/``) and the
MicroPython Unix ports built into ``build/`` are not part of the installed package. What needs
them (``jobsctl device run``, ``demo``, ``deploy``, the tests and the benchmarks) finds them
here: the folder above ``tools/`` when jobsctl runs from the checkout (``make venv`` installs it
editable), else the folder ``JOBSCTL_CHECKOUT`` names. Commands that need no device code
(``serve``, ``thing``, ``job``, ``image``, ``flash``, ``provision``) never look here, so a
``pip install .`` outside the checkout runs them as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import JobsctlError

# JOBSCTL_CHECKOUT: a checkout for an installed jobsctl (e.g. `pip install .` elsewhere).
ROOT = Path(os.environ.get("JOBSCTL_CHECKOUT") or Path(__file__).resolve().parents[2]).resolve()
LIB = ROOT / "lib"
SIM = ROOT / "sim"
BUILD = ROOT / "build"
# The stock-firmware board: MicroPython 1.25, 32-bit, with the board memory model and what
# official ESP32 firmware has built in or frozen (firmware/unix-board-manifest.py).
MICROPYTHON = BUILD / "micropython"
# The custom-firmware board: the same with the device library frozen in too, as
# firmware/manifest.py freezes it into a custom ESP32 firmware (`make micropython-frozen`).
MICROPYTHON_FROZEN = BUILD / "micropython-frozen"
# The stock-firmware board on the newest MicroPython in Debian (`make micropython-newest`).
MICROPYTHON_NEWEST = BUILD / "micropython-1.26"
# umqtt.simple, pinned (`make umqtt`): frozen into official firmware, a source folder here.
UPYLIB = BUILD / "upylib"


def require(what: str) -> Path:
    """ROOT, or one clear error naming ``what`` needs it when jobsctl runs outside a checkout."""
    if not (LIB / "iotjobs").is_dir():
        raise JobsctlError(
            f"{what} needs the project's checkout (lib/, sim/, build/); none at {ROOT}: run "
            "jobsctl from the checkout's .venv, or set JOBSCTL_CHECKOUT to the checkout"
        )
    return ROOT


def unix_port(frozen: bool = False, newest: bool = False) -> Path:
    """The Unix port a simulated board runs on; a clear error if it has not been built."""
    port = MICROPYTHON_FROZEN if frozen else MICROPYTHON_NEWEST if newest else MICROPYTHON
    if not port.exists():
        require("a simulated board")
        target = {MICROPYTHON: "setup", MICROPYTHON_NEWEST: "micropython-newest"}.get(
            port, port.name
        )
        raise JobsctlError(f"{port} is missing: run `make {target}`")
    return port
