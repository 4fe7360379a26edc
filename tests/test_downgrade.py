"""No downgrades: the device refuses a signed image whose app-descriptor secure_version is below
its monotonic security counter (NVS, via esp32.NVS; the sim keeps it in flash/nvs.json across
resets), unless the job and the device config both allow it; a counter that cannot be read
refuses every image. Also the NVS stand-in itself, and ``jobsctl image build --secure-version``.

The boards run the library frozen (as a custom firmware carries it): these tests run several
OTA jobs in one boot, and as .mpy files in OTA_HEAP (192 KB) the second job's module loads no
longer find room (MemoryError allocating 640 bytes) since the library grew."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from plugin_agent import FROZEN_OTA_HEAP, details, final
from plugin_stack import unique
from test_ota_e2e import Boards, ota_board, ota_job, running_version, thing_of

from jobsctl import cli, image, otajob
from jobsctl.device import DeviceProcess, board_dir
from jobsctl.stack import Stack


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return otajob.signing_key(tmp_path_factory.mktemp("signing"))


def nvs(dev: DeviceProcess) -> dict[str, Any]:
    return dict(json.loads((dev.board / "flash" / "nvs.json").read_text()))


def update(stack: Stack, dev: DeviceProcess, key: Path, version: str, sv: int, **doc: Any) -> Any:
    data = image.build_app_image(version, size=80_000, secure_version=sv)
    job = ota_job(stack, thing_of(dev), data, key, **doc)
    return final(stack, thing_of(dev), job, timeout=120)


def test_older_secure_version_is_rejected_and_the_running_firmware_untouched(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing, frozen=True)
    ex = update(stack_session, dev, signing, "2.0.0", 2)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert details(ex)["secure_version"] == "2"
    assert nvs(dev) == {"iotjobs": {"secver": ["i32", 2]}}
    ex = update(stack_session, dev, signing, "2.1.0", 1)
    assert ex["status"] == "REJECTED", details(ex)
    assert details(ex)["reason"] == "downgrade: secure_version 1 is below this device's 2"
    assert running_version(dev) == "2.0.0"
    flash = json.loads((dev.board / "flash" / "otadata.json").read_text())
    assert flash["boot"] == flash["running"] == "ota_1" and flash["state"]["ota_1"] == "VALID"
    other = image.slot_image(dev.board, "ota_0")
    assert other[:1] != b"\xe9"  # the refused image's head was erased: nothing bootable left
    # The same or a higher secure_version still goes through.
    ex = update(stack_session, dev, signing, "2.2.0", 2)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)


def test_a_downgrade_needs_both_the_job_and_the_device_config(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    strict = ota_board(stack_session, boards, signing, frozen=True)
    assert update(stack_session, strict, signing, "3.0.0", 5)["status"] == "SUCCEEDED"
    ex = update(stack_session, strict, signing, "2.9.0", 4, allow_downgrade=True)
    assert ex["status"] == "REJECTED"
    assert details(ex)["reason"].endswith("(the device config does not allow downgrades)")
    lax = ota_board(stack_session, boards, signing, frozen=True, ota_allow_downgrade=True)
    assert update(stack_session, lax, signing, "3.0.0", 5)["status"] == "SUCCEEDED"
    assert update(stack_session, lax, signing, "2.9.0", 4)["status"] == "REJECTED"
    ex = update(stack_session, lax, signing, "2.9.0", 4, allow_downgrade=True)
    assert ex["status"] == "SUCCEEDED", "\n".join(lax.lines)
    assert running_version(lax) == "2.9.0"
    assert nvs(lax)["iotjobs"]["secver"] == ["i32", 5]  # the counter never goes down


def test_the_running_images_secure_version_is_a_floor_too(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    # No counter in NVS yet: a board flashed over USB with an image of secure_version 3.
    thing = unique("svfloor")
    image.init_sim_flash(board_dir(stack_session.state_dir, thing), "1.5.0", secure_version=3)
    dev = boards(
        stack_session,
        thing,
        start=False,
        heapsize=FROZEN_OTA_HEAP,
        frozen=True,
        ota_key_file="ota_key.pem",
    )
    shutil.copy(image.public_key_path(signing), dev.board / "ota_key.pem")
    dev.start()
    dev.wait_for("no pending job")
    ex = update(stack_session, dev, signing, "1.6.0", 2)
    assert ex["status"] == "REJECTED", details(ex)
    assert details(ex)["reason"] == "downgrade: secure_version 2 is below this device's 3"
    assert running_version(dev) == "1.5.0"


def test_an_unreadable_counter_refuses_every_image(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing, frozen=True)
    (dev.board / "flash" / "nvs.json").write_text("{not json")  # a corrupted NVS partition
    ex = update(stack_session, dev, signing, "9.0.0", 9)
    assert ex["status"] == "FAILED"
    assert details(ex)["reason"].startswith("security counter unreadable")
    assert "ESP_ERR_NVS_CORRUPT_KEY_PART" in details(ex)["reason"]
    assert running_version(dev) == "1.0.0"


NVS_SCRIPT = """
import esp32
n = esp32.NVS("iotjobs")
def err(f):
    try:
        f()
    except OSError as e:
        return e.args
print(err(lambda: n.get_i32("secver")))
n.set_i32("secver", 7)
print(n.get_i32("secver"), err(lambda: esp32.NVS("iotjobs").get_i32("secver")))
n.commit()
print(esp32.NVS("iotjobs").get_i32("secver"))
print(err(lambda: n.get_i32("k" * 16)), err(lambda: n.get_blob("secver", bytearray(4))))
n.set_blob("b", b"abc")
buf = bytearray(8)
print(n.get_blob("b", buf), bytes(buf[:3]))
n.erase_key("b")
print(err(lambda: n.erase_key("b")))
"""


def test_nvs_stand_in_behaves_like_the_firmware(micropython: Any, tmp_path: Path) -> None:
    (tmp_path / "flash").mkdir()
    out = micropython(NVS_SCRIPT, cwd=tmp_path).check().out.splitlines()
    assert out[0] == "(-4354, 'ESP_ERR_NVS_NOT_FOUND')"
    assert out[1] == "7 (-4354, 'ESP_ERR_NVS_NOT_FOUND')"  # not on flash before commit()
    assert out[2] == "7"
    assert out[3] == "(-4361, 'ESP_ERR_NVS_KEY_TOO_LONG') (-4355, 'ESP_ERR_NVS_TYPE_MISMATCH')"
    assert out[4] == "3 b'abc'"
    assert out[5] == "(-4354, 'ESP_ERR_NVS_NOT_FOUND')"
    # Committed values survive the process (a reset).
    again = micropython("import esp32; print(esp32.NVS('iotjobs').get_i32('secver'))", cwd=tmp_path)
    assert again.check().out.strip() == "7"


def test_image_build_secure_version_flag(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "app.bin"
    assert (
        cli.main(["image", "build", "--version", "1.2.3", "--secure-version", "4", "-o", str(out)])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["secure_version"] == 4
    assert image.read_secure_version(out.read_bytes()) == 4
    assert cli.main(["image", "info", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["secure_version"] == 4
    assert (
        cli.main(["image", "build", "--version", "1", "--secure-version", "-1", "-o", str(out)])
        == 1
    )
    assert "secure_version must be" in capsys.readouterr().err


def test_jobsctl_job_ota_allow_downgrade_flag(
    stack_session: Stack, boards: Boards, signing: Path, tmp_path: Path, capsys: Any
) -> None:
    dev = ota_board(stack_session, boards, signing, frozen=True, ota_allow_downgrade=True)
    assert update(stack_session, dev, signing, "3.0.0", 3)["status"] == "SUCCEEDED"
    f = tmp_path / "old.bin"
    argv = ["image", "build", "--version", "2.0.0", "--secure-version", "2", "-o", str(f)]
    assert cli.main(argv) == 0
    job = "dg-" + dev.board.name
    argv = ["job", "ota", job, "--state-dir", str(stack_session.state_dir), "--targets"]
    argv += [thing_of(dev), "--file", str(f), "--key", str(signing), "--allow-downgrade"]
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["document"]["allow_downgrade"] is True
    ex = final(stack_session, thing_of(dev), job, timeout=120)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert running_version(dev) == "2.0.0"
