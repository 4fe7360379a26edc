"""``jobsctl device run``: a simulated ESP32 board running the real device code."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..boardmodel import DEFAULT, PROFILES
from ..device import DeviceProcess, setup_board
from ..errors import JobsctlError
from . import state_dir_argument


def register(sub: Any) -> None:
    p = sub.add_parser("device", help="simulated ESP32 boards (the device code, Unix port)")
    dsub = p.add_subparsers(dest="device_command", metavar="ACTION")
    dsub.required = True
    r = dsub.add_parser(
        "run",
        help="power on DIR/devices/NAME and stream its console until Ctrl-C",
        description=(
            "Run boot.py, main.py and lib/ under the MicroPython Unix port for thing NAME "
            "(made with `jobsctl thing create`), in its own folder DIR/devices/NAME/. A reset "
            "of the device code restarts it; an unfed watchdog resets it."
        ),
    )
    state_dir_argument(r, more="the stack the board connects to (jobsctl serve)")
    r.add_argument("name", help="the thing (made with jobsctl thing create)")
    r.add_argument("--version", default="1.0.0", help="firmware version of a new board's ota_0")
    r.add_argument(
        "--profile",
        default=DEFAULT,
        choices=list(PROFILES),
        help=f"the board's memory (docs/board-model.md; default {DEFAULT}): "
        + "; ".join(f"{p.name}: {p.summary}" for p in PROFILES.values()),
    )
    r.add_argument(
        "--heapsize", help="the first GC heap area, e.g. 64k (default: the profile's, 56k)"
    )
    r.add_argument(
        "--ota-key",
        type=Path,
        help="PEM public key (from `jobsctl image keygen`): the board accepts only OTA images "
        "signed with its private half",
    )
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    extra = {"ota_key_file": "ota_key.pem"} if args.ota_key else None
    board = setup_board(args.state_dir, args.name, version=args.version, extra=extra)
    if args.ota_key:
        try:
            shutil.copyfile(args.ota_key, board / "ota_key.pem")
        except OSError as exc:
            raise JobsctlError(f"cannot read {args.ota_key}: {exc.strerror}") from None
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    prefix = f"[{args.name}] "
    dev = DeviceProcess(
        board,
        heapsize=args.heapsize,
        profile=args.profile,
        on_line=lambda line: print(prefix + line, flush=True),
    )
    try:
        dev.start()
        while not stop.wait(0.5) and (dev.running or not dev.exits or dev.exits[-1] == 3):
            pass
    finally:
        dev.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not stop.is_set():
        print(f"jobsctl: {args.name} stopped (status {dev.exits[-1]})", file=sys.stderr)
        return 1
    return 0
