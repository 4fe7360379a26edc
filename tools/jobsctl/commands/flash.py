"""``jobsctl flash --port PORT --firmware FILE [--dry-run]``: esptool erase + write, checked."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import JobsctlError
from ..flash import BOOTLOADER_OFFSET, DEFAULT_BAUD, flash
from . import check_port


def register(sub: Any) -> None:
    p = sub.add_parser(
        "flash",
        help="erase a board and write a MicroPython firmware with an OTA partition table",
        description=(
            "Checks the combined firmware image first (bootloader and application checksums "
            "and SHA-256, a partition table at 0x8000 with otadata/ota_0/ota_1, the application "
            "fits), then runs esptool erase-flash and write-flash. --dry-run prints the esptool "
            "commands without running them."
        ),
    )
    p.add_argument("--port", required=True, help="serial port of the board (e.g. /dev/ttyUSB0)")
    p.add_argument("--firmware", required=True, help="combined firmware .bin")
    p.add_argument("--chip", default="esp32", choices=sorted(BOOTLOADER_OFFSET))
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD)
    p.add_argument("--dry-run", action="store_true", help="check and print, do not run esptool")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.firmware:  # `make flash` without FIRMWARE=
        raise JobsctlError("no firmware file: give --firmware FILE (make flash FIRMWARE=FILE)")
    if not args.dry_run:  # a dry run checks the file only; it needs no board
        check_port(args.port)
    flash(args.port, Path(args.firmware), chip=args.chip, baud=args.baud, dry_run=args.dry_run)
    return 0
