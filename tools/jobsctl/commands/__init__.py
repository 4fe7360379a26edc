"""Subcommands of ``jobsctl``: each module here defines ``register(subparsers)``.

Shared helpers for commands: :func:`load_endpoints`, :func:`print_json`, :func:`serve_alive`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from ..errors import JobsctlError


def load_endpoints(state_dir: Path) -> dict[str, Any]:
    """DIR/endpoints.json written by a running ``jobsctl serve``."""
    path = Path(state_dir) / "endpoints.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise JobsctlError(
            f"{path} does not exist: start `jobsctl serve --state-dir {state_dir}` first"
        ) from None
    except ValueError as exc:
        raise JobsctlError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise JobsctlError(f"{path} is not a JSON object")
    return data


def serve_alive(state_dir: Path) -> dict[str, Any] | None:
    """The endpoints of a running stack on this state dir, or None when none runs."""
    try:
        endpoints = load_endpoints(state_dir)
        os.kill(int(endpoints["service_pid"]), 0)
    except (JobsctlError, KeyError, ValueError, ProcessLookupError, PermissionError):
        return None
    return endpoints


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
