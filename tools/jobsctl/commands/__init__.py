"""Subcommands of ``jobsctl``: each module here defines ``register(subparsers)``.

Shared helpers for commands: :func:`state_dir_argument` (``--state-dir``, the same everywhere),
:func:`print_json`, :func:`check_port`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from ..errors import JobsctlError
from ..statedir import StateDir


def state_dir_argument(
    parser: argparse.ArgumentParser,
    *,
    required: bool = True,
    default: str | None = None,
    more: str = "",
) -> None:
    """``--state-dir DIR``, the same flag with the same meaning in every command: the local
    stack's folder (jobsctl.statedir); parsed into a :class:`StateDir`."""
    parser.add_argument(
        "--state-dir",
        type=StateDir,
        required=required,
        default=default,
        metavar="DIR",
        help="the local stack's folder (endpoints.json, jobs.sqlite3, ca/, things/NAME/, "
        "devices/NAME/: README, 'The state directory')" + (f"; {more}" if more else ""),
    )


def check_port(port: str) -> None:
    """A serial port path that does not exist gets one clear line, before any tool runs."""
    if not port:
        raise JobsctlError("no serial port: give --port (e.g. /dev/ttyUSB0)")
    if not Path(port).exists():
        import glob

        found = sorted(glob.glob("/dev/ttyUSB*") + glob.glob("/dev/ttyACM*"))
        found += sorted(glob.glob("/dev/cu.usb*"))
        seen = f"serial ports here: {', '.join(found)}" if found else "no serial port is present"
        raise JobsctlError(f"{port} does not exist: is the board plugged in? ({seen})")


def _default(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    raise TypeError(f"cannot print {type(value).__name__}")


def print_json(data: Any) -> None:
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "ResponseMetadata"}
    print(json.dumps(data, indent=2, default=_default))
