"""`jobsctl image`: app images that esptool validates, signatures that verify, clear refusals."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobsctl import cli, image

ESPTOOL = str(Path(sys.executable).parent / "esptool")


def jobsctl(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("size", [1 << 20, 8 << 20])
def test_built_images_pass_esptool_image_info(tmp_path, capsys, size):
    out_file = tmp_path / "app.bin"
    rc, out, _ = jobsctl(
        capsys,
        "image",
        "build",
        "--version",
        "2.1.0",
        "--size",
        f"{size >> 20}M",
        "-o",
        str(out_file),
        "--slot-size",  # larger than a 4 MiB board's OTA slot: say which slot it is for
        "16M",
    )
    assert rc == 0
    meta = json.loads(out)
    data = out_file.read_bytes()
    assert meta["size"] == len(data) and abs(len(data) - size) < 64
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    info = subprocess.run(
        [ESPTOOL, "--chip", "esp32", "image_info", str(out_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Checksum:" in info and "(valid)" in info.split("Checksum:")[1].splitlines()[0]
    assert (
        "Validation hash:" in info
        and "(valid)" in info.split("Validation hash:")[1].splitlines()[0]
    )
    assert "App version: 2.1.0" in info


def test_same_version_builds_the_same_bytes():
    assert image.build_app_image("3.0.0", 50000) == image.build_app_image("3.0.0", 50000)
    assert image.build_app_image("3.0.0", 50000) != image.build_app_image("3.0.1", 50000)


@pytest.mark.parametrize(
    ("offset", "why"), [(0, "no 0xE9"), (5000, "checksum mismatch"), (-1, "SHA-256 mismatch")]
)
def test_info_refuses_a_corrupted_image_in_one_line(tmp_path, capsys, offset, why):
    data = bytearray(image.build_app_image("2.0.0", 20000))
    data[offset] ^= 0x55
    f = tmp_path / "bad.bin"
    f.write_bytes(bytes(data))
    rc, out, err = jobsctl(capsys, "image", "info", str(f))
    assert rc == 1 and not out
    assert err.startswith("jobsctl: invalid app image:") and why in err and err.count("\n") == 1


def test_info_refuses_an_image_larger_than_the_slot(tmp_path, capsys):
    f = tmp_path / "big.bin"
    f.write_bytes(image.build_app_image("2.0.0", 200_000))
    rc, _, err = jobsctl(capsys, "image", "info", str(f), "--slot-size", "128k")
    assert rc == 1 and "do not fit" in err


def test_keygen_sign_and_verify_round_trip(tmp_path, capsys):
    key = tmp_path / "signing.pem"
    rc, out, _ = jobsctl(capsys, "image", "keygen", str(key))
    assert rc == 0 and json.loads(out)["public_key"] == str(tmp_path / "signing.pub.pem")
    assert key.stat().st_mode & 0o777 == 0o600
    f = tmp_path / "app.bin"
    f.write_bytes(image.build_app_image("2.0.0", 30000))
    rc, out, _ = jobsctl(capsys, "image", "sign", str(f), "--key", str(key))
    sig = out.strip()
    pub = (tmp_path / "signing.pub.pem").read_bytes()
    assert image.verify(f.read_bytes(), sig, pub)
    assert not image.verify(f.read_bytes() + b"x", sig, pub)
    rc, _, err = jobsctl(capsys, "image", "keygen", str(key))
    assert rc == 1 and "not overwriting" in err
