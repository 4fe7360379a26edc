"""``jobsctl flash``: write a MicroPython ESP32 firmware with an OTA partition table.

    info = check_firmware(Path("ESP32_GENERIC-OTA-20250415-v1.25.0.bin"))
    flash("/dev/ttyUSB0", Path("ESP32_GENERIC-OTA-20250415-v1.25.0.bin"), dry_run=True)

The firmware is the combined download image (``firmware.bin``): bootloader, partition table
at 0x8000 and the application at 0x10000, in one file that is written at the bootloader's
address (0x1000 on the ESP32 and ESP32-S2, 0x0 on the later chips). Before anything touches
the board the file is checked:

- the bootloader and the application parse as ESP images for the chip, and their checksums
  and appended SHA-256 digests are valid (what ``esptool image-info`` prints as "valid" or
  "invalid" -- its exit code is 0 either way, so the check is done here with esptool's own
  ``LoadFirmwareImage``);
- the partition table at 0x8000 is well formed (32-byte entries, magic 0x50AA, its MD5 entry
  matches) and has ``otadata``, ``ota_0`` and ``ota_1``: without them the agent cannot update
  the firmware over the air (the ESP32_GENERIC board's ``OTA`` variant has them);
- the application fits its partition.

Then ``esptool erase-flash`` and ``esptool write-flash`` run (``--dry-run`` prints them).
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import JobsctlError

# Where each chip's ROM loads the second-stage bootloader from.
BOOTLOADER_OFFSET = {
    "esp32": 0x1000,
    "esp32s2": 0x1000,
    "esp32s3": 0x0,
    "esp32c3": 0x0,
    "esp32c6": 0x0,
}
PARTITION_TABLE_OFFSET = 0x8000
PARTITION_TABLE_SIZE = 0xC00
_ENTRY = struct.Struct("<HBBII16sI")
_MAGIC = 0x50AA
_MD5_MAGIC = 0xEBEB
APP, DATA = 0x00, 0x01
SUBTYPE_OTA_0, SUBTYPE_OTA_1, SUBTYPE_OTADATA = 0x10, 0x11, 0x00
_APP_DESC_MAGIC = 0xABCD5432
DEFAULT_BAUD = 460800


@dataclass(frozen=True)
class Partition:
    label: str
    type: int
    subtype: int
    offset: int
    size: int


@dataclass
class FirmwareInfo:
    path: Path
    chip: str
    size: int
    flash_offset: int
    partitions: list[Partition] = field(default_factory=list)
    app_offset: int = 0
    app_size: int = 0
    app_version: str = ""
    app_project: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "firmware": str(self.path),
            "chip": self.chip,
            "size": self.size,
            "write_at": hex(self.flash_offset),
            "app": {
                "offset": hex(self.app_offset),
                "size": self.app_size,
                "version": self.app_version,
                "project": self.app_project,
            },
            "partitions": [
                {
                    "label": p.label,
                    "type": p.type,
                    "subtype": p.subtype,
                    "offset": hex(p.offset),
                    "size": hex(p.size),
                }
                for p in self.partitions
            ],
        }


def parse_partition_table(data: bytes) -> list[Partition]:
    """ESP-IDF's binary partition table: entries until 0xFF padding, an MD5 entry if present."""
    parts: list[Partition] = []
    for pos in range(0, min(len(data), PARTITION_TABLE_SIZE) - _ENTRY.size + 1, _ENTRY.size):
        entry = data[pos : pos + _ENTRY.size]
        magic = struct.unpack_from("<H", entry)[0]
        if magic == _MAGIC:
            _, ptype, subtype, offset, size, label, _flags = _ENTRY.unpack(entry)
            name = label.split(b"\0", 1)[0].decode("ascii", "replace")
            parts.append(Partition(name, ptype, subtype, offset, size))
        elif magic == _MD5_MAGIC:
            if hashlib.md5(data[:pos]).digest() != entry[16:32]:
                raise JobsctlError("the partition table's MD5 does not match: it is corrupted")
            break
        elif entry == b"\xff" * _ENTRY.size:
            break
        else:
            raise JobsctlError(f"the partition table has a bad entry at offset {pos:#x}")
    if not parts:
        raise JobsctlError(
            f"no partition table at {PARTITION_TABLE_OFFSET:#x}: this is not a combined firmware "
            "image (an .app-bin is the OTA payload, not something to flash)"
        )
    return parts


def _esptool_image(chip: str, data: bytes, what: str) -> Any:
    from esptool.bin_image import LoadFirmwareImage
    from esptool.util import FatalError

    try:
        image = LoadFirmwareImage(chip, data)
    except (FatalError, struct.error, ValueError, IndexError) as exc:
        raise JobsctlError(f"the {what} is not a valid {chip} image: {exc}") from None
    if image.checksum != image.calculate_checksum():
        raise JobsctlError(f"the {what} image has an invalid checksum: the file is corrupted")
    if image.append_digest and image.stored_digest != image.calc_digest:
        raise JobsctlError(f"the {what} image has an invalid SHA-256 digest: the file is corrupted")
    rom = image.ROM_LOADER
    if image.chip_id != rom.IMAGE_CHIP_ID:
        raise JobsctlError(f"the {what} image is not built for the {chip}")
    return image


def _app_descriptor(image: Any) -> tuple[str, str]:
    for seg in image.segments:
        if len(seg.data) >= 80 and struct.unpack_from("<I", seg.data)[0] == _APP_DESC_MAGIC:
            version = seg.data[16:48].split(b"\0", 1)[0].decode("ascii", "replace")
            project = seg.data[48:80].split(b"\0", 1)[0].decode("ascii", "replace")
            return version, project
    return "", ""


def check_firmware(path: Path, chip: str = "esp32") -> FirmwareInfo:
    """Validate a combined firmware image; refuse it with one clear line otherwise."""
    if chip not in BOOTLOADER_OFFSET:
        raise JobsctlError(f"unsupported chip {chip!r}: one of {', '.join(BOOTLOADER_OFFSET)}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JobsctlError(f"cannot read firmware {path}: {exc.strerror}") from None
    base = BOOTLOADER_OFFSET[chip]
    info = FirmwareInfo(path=path, chip=chip, size=len(data), flash_offset=base)
    if data[:1] != b"\xe9":
        raise JobsctlError(f"{path} does not start with an ESP image header (0xE9)")
    _esptool_image(chip, data, "bootloader")
    table_at = PARTITION_TABLE_OFFSET - base
    info.partitions = parse_partition_table(data[table_at : table_at + PARTITION_TABLE_SIZE])
    found = {(p.type, p.subtype): p for p in info.partitions}
    missing = [
        name
        for name, key in (
            ("otadata", (DATA, SUBTYPE_OTADATA)),
            ("ota_0", (APP, SUBTYPE_OTA_0)),
            ("ota_1", (APP, SUBTYPE_OTA_1)),
        )
        if key not in found
    ]
    if missing:
        raise JobsctlError(
            f"the partition table has no {'/'.join(missing)}: this firmware cannot be updated "
            "over the air; use the ESP32_GENERIC OTA variant (BOARD_VARIANT=OTA)"
        )
    apps = sorted((p for p in info.partitions if p.type == APP), key=lambda p: p.offset)
    first = apps[0]
    app_data = data[first.offset - base :]
    if not app_data[:1] == b"\xe9":
        raise JobsctlError(f"no application image at {first.offset:#x} ({first.label})")
    app = _esptool_image(chip, app_data, "application")
    info.app_offset = first.offset
    info.app_size = int(app.data_length or 0) + (32 if app.append_digest else 0)
    if info.app_size > first.size:
        raise JobsctlError(
            f"the application ({info.app_size} bytes) does not fit {first.label} "
            f"({first.size} bytes)"
        )
    info.app_version, info.app_project = _app_descriptor(app)
    return info


def _esptool() -> str:
    found = shutil.which("esptool", path=str(Path(sys.executable).parent)) or shutil.which(
        "esptool"
    )
    if not found:
        raise JobsctlError("esptool is not installed: run `make venv`")
    return found


def esptool_commands(
    port: str, info: FirmwareInfo, baud: int = DEFAULT_BAUD, esptool: str = "esptool"
) -> list[list[str]]:
    common = [esptool, "--chip", info.chip, "--port", port, "--baud", str(baud)]
    return [
        [*common, "erase-flash"],
        [*common, "write-flash", hex(info.flash_offset), str(info.path)],
    ]


def flash(
    port: str,
    firmware: Path,
    *,
    chip: str = "esp32",
    baud: int = DEFAULT_BAUD,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
) -> FirmwareInfo:
    if not port:
        raise JobsctlError("no port: give --port (e.g. PORT=/dev/ttyUSB0 for make flash)")
    if not str(firmware):
        raise JobsctlError("no firmware: give --firmware (e.g. FIRMWARE=firmware.bin)")
    info = check_firmware(Path(firmware), chip)
    echo(
        f"{info.path}: {info.app_project or 'app'} {info.app_version or '?'} for {chip}, "
        f"partitions {', '.join(p.label for p in info.partitions)}: OK"
    )
    commands = esptool_commands(port, info, baud, _esptool())
    for cmd in commands:
        echo(shlex.join(cmd))
        if dry_run:
            continue
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            step = cmd[cmd.index(str(baud)) + 1]
            raise JobsctlError(f"esptool {step} failed (exit code {proc.returncode}) on {port}")
    return info


def _csv_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
    digits = text[:-1] if mult > 1 else text
    return int(digits, 0) * mult


def ota_slot_size(path: Path) -> int:
    """The size of the smallest OTA app slot (ota_0, ota_1, ...) in a partition layout: an
    ESP-IDF ``partitions.csv`` (sizes given), a binary partition table, or a combined firmware
    image with its table at 0x8000. What an OTA image must fit on boards flashed with it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JobsctlError(f"cannot read --partitions {path}: {exc.strerror}") from None
    sizes: list[int] = []
    if data[:2] == struct.pack("<H", _MAGIC):
        parts = parse_partition_table(data)
    elif data[:1] == b"\xe9":  # a combined firmware image, written at 0x1000 on an ESP32
        table_at = PARTITION_TABLE_OFFSET - BOOTLOADER_OFFSET["esp32"]
        parts = parse_partition_table(data[table_at : table_at + PARTITION_TABLE_SIZE])
    else:
        parts = []
        for n, line in enumerate(data.decode(errors="replace").splitlines(), 1):
            cols = [c.strip() for c in line.split("#", 1)[0].split(",")]
            if len(cols) < 5 or cols[1] != "app" or not cols[2].startswith("ota_"):
                continue
            try:
                sizes.append(_csv_size(cols[4]))
            except ValueError:
                raise JobsctlError(f"{path}:{n}: bad size {cols[4]!r}") from None
    sizes += [p.size for p in parts if p.type == APP and 0x10 <= p.subtype <= 0x1F]
    if not sizes:
        raise JobsctlError(f"{path} has no OTA app slot (ota_0): not an OTA partition layout")
    return min(sizes)
