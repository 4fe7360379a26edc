"""The device smoke suite on the newest MicroPython in Debian (build/micropython-1.26: the
stock-firmware board built from sid's 1.26.1 source package, lib/ as .mpy files from
mpy-cross 1.25, whose .mpy version 1.26 loads unchanged): an agent job, a signed OTA and a
bundle, end to end on the local stack, as on a board flashed with current firmware."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import test_bundle_e2e
import test_ota_e2e
from plugin_agent import create_job, details, final
from plugin_stack import unique

from jobsctl import image, otajob
from jobsctl.device import DeviceProcess
from jobsctl.stack import Stack

Boards = Callable[..., DeviceProcess]


@pytest.fixture()
def boards(boards: Boards) -> Boards:
    return functools.partial(boards, newest=True)


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return otajob.signing_key(tmp_path_factory.mktemp("signing"))


def test_the_board_runs_micropython_1_26(stack_session: Stack, boards: Boards) -> None:
    dev = boards(stack_session, unique("newest"))
    dev.wait_for("no pending job")
    assert dev.pid is not None
    assert os.readlink(f"/proc/{dev.pid}/exe").endswith("/build/micropython-1.26")


def test_config_job_succeeds_on_1_26(stack_session: Stack, boards: Boards) -> None:
    thing = unique("newest")
    dev = boards(stack_session, thing)
    dev.wait_for("no pending job")
    job = create_job(stack_session, thing, {"operation": "config", "set": {"keepalive_s": 45}})
    ex = final(stack_session, thing, job)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert details(ex) == {"reason": "applied", "changed": "keepalive_s"}
    assert json.loads((dev.board / "config.json").read_text())["keepalive_s"] == 45


def test_signed_ota_succeeds_on_1_26(stack_session: Stack, boards: Boards, signing: Path) -> None:
    dev = test_ota_e2e.ota_board(stack_session, boards, signing)
    data = image.build_app_image("2.0.0", size=300_000)
    job = test_ota_e2e.ota_job(stack_session, dev.board.name, data, signing)
    ex = final(stack_session, dev.board.name, job, timeout=120)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert details(ex)["reason"] == "running 2.0.0"
    assert dev.boots == 2 and test_ota_e2e.running_version(dev) == "2.0.0"


def test_signed_bundle_succeeds_on_1_26(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = test_bundle_e2e.app_board(stack_session, boards, signing)
    new = {"sensor.py": b"VERSION = 2\n", "selftest.py": b"def run(ctx):\n    return None\n"}
    doc, extra = otajob.prepare_bundle(
        stack_session, otajob.build_bundle(new), "app-2", key=signing
    )
    ex = test_bundle_e2e.run_job(stack_session, dev, doc, extra)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert details(ex)["reason"] == "app app-2 running"
    assert test_bundle_e2e.app_files(dev) == new
