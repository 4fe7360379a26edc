"""`jobsctl flash`: the firmware check before esptool runs, and the exact esptool commands.

Test images are real ESP32 images made with esptool's own image writer (header, segments,
checksum, appended SHA-256), combined as in MicroPython's firmware.bin: bootloader at 0x1000,
partition table at 0x8000, application at 0x10000.
"""

from __future__ import annotations

import hashlib
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from esptool.bin_image import ELFSection, ESP32FirmwareImage

from jobsctl import cli
from jobsctl.checkout import ROOT
from jobsctl.errors import JobsctlError
from jobsctl.flash import check_firmware, flash, parse_partition_table

ESPTOOL = str(Path(sys.executable).parent / "esptool")

# MicroPython's ports/esp32/partitions-4MiB-ota.csv (ESP32_GENERIC, BOARD_VARIANT=OTA)
OTA_TABLE = [
    ("nvs", 1, 0x02, 0x9000, 0x4000),
    ("otadata", 1, 0x00, 0xD000, 0x2000),
    ("phy_init", 1, 0x01, 0xF000, 0x1000),
    ("ota_0", 0, 0x10, 0x10000, 0x180000),
    ("ota_1", 0, 0x11, 0x190000, 0x180000),
    ("vfs", 1, 0x81, 0x310000, 0xF0000),
]
# The default ESP32_GENERIC table: one factory app, no OTA slots.
FACTORY_TABLE = [
    ("nvs", 1, 0x02, 0x9000, 0x6000),
    ("phy_init", 1, 0x01, 0xF000, 0x1000),
    ("factory", 0, 0x00, 0x10000, 0x1F0000),
    ("vfs", 1, 0x81, 0x200000, 0x200000),
]


def partition_table(rows: list[tuple[str, int, int, int, int]], md5: bool = True) -> bytes:
    table = b"".join(
        struct.pack("<HBBII16sI", 0x50AA, t, s, off, size, label.encode(), 0)
        for label, t, s, off, size in rows
    )
    if md5:
        table += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(table).digest()
    return table.ljust(0xC00, b"\xff")


def app_desc(version: str, project: str) -> bytes:
    # esp_app_desc_t: magic, secure_version, reserved[2], version[32], project_name[32], ...
    head = struct.pack("<IIII", 0xABCD5432, 0, 0, 0)
    return (head + version.encode().ljust(32, b"\0") + project.encode().ljust(32, b"\0")).ljust(
        256, b"\0"
    )


def esp_image(segments: list[tuple[int, bytes]]) -> bytes:
    img = ESP32FirmwareImage()
    img.entrypoint = 0x40080400
    img.segments = [ELFSection(b".s%d" % i, a, d, 0) for i, (a, d) in enumerate(segments)]
    out = img.save(None)
    assert out is not None
    return out


def app_image(version: str = "v1.25.0", size: int = 8192) -> bytes:
    return esp_image(
        [
            (0x3F400020, app_desc(version, "micropython")),
            (0x40080400, bytes(range(256)) * (size // 256)),
        ]
    )


def bootloader_image() -> bytes:
    return esp_image([(0x3FFF0030, b"\x11" * 96), (0x40078000, b"\x22" * 512)])


def combined(table: bytes, app: bytes | None = None) -> bytes:
    # file offset 0 is flash address 0x1000 on the ESP32
    out = bytearray(b"\xff" * (0x10000 - 0x1000))
    boot = bootloader_image()
    out[0 : len(boot)] = boot
    out[0x8000 - 0x1000 : 0x8000 - 0x1000 + len(table)] = table
    return bytes(out) + (app if app is not None else app_image())


@pytest.fixture()
def firmware(tmp_path: Path) -> Path:
    path = tmp_path / "ESP32_GENERIC-OTA-v1.25.0.bin"
    path.write_bytes(combined(partition_table(OTA_TABLE)))
    return path


def test_check_accepts_a_combined_ota_firmware_and_reads_its_layout(firmware: Path) -> None:
    info = check_firmware(firmware)
    assert info.flash_offset == 0x1000
    assert [p.label for p in info.partitions] == [r[0] for r in OTA_TABLE]
    assert info.app_offset == 0x10000 and info.app_version == "v1.25.0"
    assert info.app_project == "micropython"


def test_dry_run_prints_the_exact_esptool_commands_and_runs_nothing(
    firmware: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli.main(["flash", "--port", "/dev/ttyUSB0", "--firmware", str(firmware), "--dry-run"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith(
        "micropython v1.25.0 for esp32, partitions nvs, otadata, phy_init, ota_0, ota_1, vfs: OK"
    )
    assert [shlex.split(line) for line in lines[1:]] == [
        [ESPTOOL, "--chip", "esp32", "--port", "/dev/ttyUSB0", "--baud", "460800", "erase-flash"],
        [
            ESPTOOL,
            "--chip",
            "esp32",
            "--port",
            "/dev/ttyUSB0",
            "--baud",
            "460800",
            "write-flash",
            "0x1000",
            str(firmware),
        ],
    ]


def test_dry_run_commands_are_ones_esptool_accepts(firmware: Path) -> None:
    # esptool parses the printed command lines (--help stops before any port is opened)
    for line in _dry_run_lines(firmware):
        argv = shlex.split(line)
        r = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, (line, r.stderr)


def _dry_run_lines(firmware: Path) -> list[str]:
    lines: list[str] = []
    flash("/dev/ttyUSB0", firmware, dry_run=True, echo=lines.append)
    return lines[1:]


def test_make_flash_dry_run_passes_port_and_firmware(firmware: Path) -> None:
    r = subprocess.run(
        ["make", "-n", "flash", "PORT=/dev/ttyUSB0", f"FIRMWARE={firmware}", "DRY_RUN=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert f'jobsctl flash --port "/dev/ttyUSB0" --firmware "{firmware}" --dry-run' in r.stdout


def test_a_corrupted_application_is_refused_although_esptool_image_info_exits_0(
    tmp_path: Path,
) -> None:
    app = bytearray(app_image())
    app[0x400] ^= 0x01  # one bit in a segment
    bad = tmp_path / "bad.bin"
    bad.write_bytes(combined(partition_table(OTA_TABLE), bytes(app)))
    with pytest.raises(JobsctlError, match="application image has an invalid checksum"):
        check_firmware(bad)
    # what esptool itself says about the same application: "invalid", and exit code 0
    app_file = tmp_path / "app.bin"
    app_file.write_bytes(app)
    r = subprocess.run(
        [ESPTOOL, "--chip", "esp32", "image-info", str(app_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "invalid" in r.stdout


def test_a_corrupted_digest_or_bootloader_is_refused(tmp_path: Path) -> None:
    app = bytearray(app_image())
    app[-1] ^= 0xFF  # the appended SHA-256
    path = tmp_path / "digest.bin"
    path.write_bytes(combined(partition_table(OTA_TABLE), bytes(app)))
    with pytest.raises(JobsctlError, match="invalid SHA-256 digest"):
        check_firmware(path)
    data = bytearray(combined(partition_table(OTA_TABLE)))
    data[0x40] ^= 0x10  # inside the bootloader
    path.write_bytes(data)
    with pytest.raises(JobsctlError, match="bootloader image has an invalid"):
        check_firmware(path)


def test_a_firmware_without_ota_partitions_is_refused_before_esptool_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ESP32_GENERIC-v1.25.0.bin"
    path.write_bytes(combined(partition_table(FACTORY_TABLE)))
    rc = cli.main(["flash", "--port", "/dev/ttyUSB0", "--firmware", str(path), "--dry-run"])
    captured = capsys.readouterr()
    assert rc == 1 and captured.out == ""  # no esptool command printed
    assert captured.err == (
        "jobsctl: the partition table has no otadata/ota_0/ota_1: this firmware cannot be "
        "updated over the air; use the ESP32_GENERIC OTA variant (BOARD_VARIANT=OTA)\n"
    )


def test_an_app_bin_or_other_file_is_refused_as_not_a_combined_firmware(tmp_path: Path) -> None:
    app_only = tmp_path / "micropython.app-bin"
    app_only.write_bytes(app_image())
    with pytest.raises(JobsctlError, match="no partition table at 0x8000"):
        check_firmware(app_only)
    text = tmp_path / "notes.txt"
    text.write_text("not firmware")
    with pytest.raises(JobsctlError, match="does not start with an ESP image header"):
        check_firmware(text)
    with pytest.raises(JobsctlError, match="cannot read firmware"):
        check_firmware(tmp_path / "missing.bin")


def test_a_partition_table_with_a_wrong_md5_is_refused(tmp_path: Path) -> None:
    table = bytearray(partition_table(OTA_TABLE))
    table[0x20 * 3 + 4] ^= 0x01  # ota_0's offset, after the MD5 was computed
    path = tmp_path / "md5.bin"
    path.write_bytes(combined(bytes(table)))
    with pytest.raises(JobsctlError, match="MD5 does not match"):
        check_firmware(path)


def test_an_application_larger_than_its_slot_is_refused(tmp_path: Path) -> None:
    rows = [r if r[0] != "ota_0" else ("ota_0", 0, 0x10, 0x10000, 0x1000) for r in OTA_TABLE]
    path = tmp_path / "big.bin"
    path.write_bytes(combined(partition_table(rows)))
    with pytest.raises(JobsctlError, match="does not fit ota_0"):
        check_firmware(path)


def test_partition_table_parser_reads_labels_types_and_stops_at_padding() -> None:
    parts = parse_partition_table(partition_table(OTA_TABLE, md5=False))
    assert [(p.label, p.type, p.subtype, p.offset, p.size) for p in parts] == OTA_TABLE
