"""``jobsctl deploy --port PORT [--bundle DIR]``: the device code (and a bundle) onto a board."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..deploy import ARCHS, deploy
from . import check_port


def register(sub: Any) -> None:
    p = sub.add_parser(
        "deploy",
        help="compile lib/ with mpy-cross and copy it, boot.py, main.py (and a bundle) to a board",
        description=(
            "Compiles lib/iotjobs with mpy-cross 1.25 for the board's architecture, copies the "
            ".mpy files to /lib/iotjobs, boot.py and main.py to / and, with --bundle, config.json "
            "and its certificates to /, all with mpremote; removes stale files under "
            "/lib/iotjobs, verifies every file by SHA-256 on the board, then resets it."
        ),
    )
    p.add_argument("--port", required=True, help="serial port of the board (e.g. /dev/ttyUSB0)")
    p.add_argument("--bundle", type=Path, help="device bundle folder (jobsctl provision --out)")
    p.add_argument(
        "--arch",
        default="auto",
        choices=["auto", "none", *[a for a in ARCHS if a]],
        help="mpy-cross -march (default: what the board reports)",
    )
    p.add_argument("--no-reset", action="store_true", help="leave the board running as it is")
    p.add_argument(
        "--no-lib",
        action="store_true",
        help="the firmware has lib/iotjobs frozen in: copy only boot.py, main.py and the bundle",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_port(args.port)
    result = deploy(args.port, args.bundle, arch=args.arch, reset=not args.no_reset, echo=print)
    for removed in result["removed"]:
        print(f"removed stale {removed}")
    print(
        f"deployed {result['verified']} files to {result['port']} "
        f"({result['board']['platform']}, mpy-cross -march={result['march'] or 'none'}); "
        "all SHA-256 match"
    )
    return 0
