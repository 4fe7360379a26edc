"""Fixtures for end-to-end agent tests: simulated boards running the real device code.

``boards(stack, name=None, group=None, app=False)`` provisions a thing on the stack, makes its
board folder and powers it on (a :class:`jobsctl.device.DeviceProcess`); every board is
powered off after the test. With ``app=True`` the board runs the test application below
(its own main.py registering extra handlers, as a product would) instead of the plain main.py.
Boards run ``build/micropython``, the stock-firmware board (lib/ as .mpy files), with the memory
of ``profile`` (default BOARD_PROFILE below; jobsctl.boardmodel). With ``frozen=True`` they run
``build/micropython-frozen`` (the device code frozen in, as firmware/manifest.py freezes it for a
board); with ``newest=True`` ``build/micropython-1.26``. Each port is rebuilt first if lib/, sim/
or the model changed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from plugin_stack import unique, wait_until

from jobsctl import boardmodel
from jobsctl.checkout import ROOT, unix_port
from jobsctl.device import DeviceProcess, setup_board
from jobsctl.service.common import TERMINAL
from jobsctl.stack import Stack

# The simulated board's memory (jobsctl.boardmodel, docs/board-model.md): a profile gives the
# first GC area and the ESP-IDF heap that TLS sessions and the GC heap's growth take from.
# BOARD_PROFILE is what every e2e board runs unless a test names another; the heaps below are
# None (the profile's own first area, 56 KB as on ESP32) unless SIM_E2E_HEAPS says otherwise.
# (boardmodel.DEFAULT says why it is not esp32-plain yet; SIM_E2E_PROFILE=esp32-plain runs the
# e2e tests on the plain board.)
BOARD_PROFILE = os.environ.get("SIM_E2E_PROFILE", boardmodel.DEFAULT)
assert BOARD_PROFILE in boardmodel.PROFILES, BOARD_PROFILE
_LEGACY = os.environ.get("SIM_E2E_HEAPS") == "1"
# The first GC area of the agent's boards (.mpy, `make deploy` onto stock firmware) and of the
# custom-firmware boards (library frozen in); of boards running an OTA or bundle job.
HEAP: str | None = "128k" if _LEGACY else None
FROZEN_HEAP: str | None = "64k" if _LEGACY else None
OTA_HEAP: str | None = "192k" if _LEGACY else None
FROZEN_OTA_HEAP: str | None = "112k" if _LEGACY else None


def _made(target: str) -> None:
    # make decides whether the port is stale (lib/, sim/, the model changed), one at a time.
    with open(ROOT / "build" / ".frozen.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(["make", "-s", target], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def board_port() -> Path:
    """build/micropython (the stock-firmware board), up to date with sim/ and the model."""
    _made("micropython")
    return unix_port()


@pytest.fixture(scope="session")
def frozen_port() -> Path:
    """build/micropython-frozen, up to date with lib/ and sim/."""
    _made("micropython-frozen")
    return unix_port(frozen=True)


@pytest.fixture(scope="session")
def newest_port() -> Path:
    """build/micropython-1.26: the stock-firmware board on the newest MicroPython in Debian."""
    _made("micropython-newest")
    return unix_port(newest=True)


# A product's main.py: its own handlers, then the agent. `wait` runs until the file named by
# the document exists on the board (the test creates it), checking for cancellation; it counts
# its runs in its persisted state so that a resumed run is visible.
TEST_APP = """\
from iotjobs import agent, app


async def wait(ctx, doc):
    ctx.state["runs"] = ctx.state.get("runs", 0) + 1
    ctx.save()
    ctx.log("waiting for %s (run %d)" % (doc["until"], ctx.state["runs"]))
    while True:
        try:
            open(doc["until"]).close()
            break
        except OSError:
            pass
        await ctx.check()
        await ctx.sleep(20)
    return {"reason": "done", "runs": str(ctx.state["runs"])}


async def crash(ctx, doc):
    ctx.log("resetting in the middle of the job")
    ctx.board.reset()  # a hard reset with no clean step first, at every run


agent.register("wait", wait)
agent.register("crash", crash)
agent.register("wait-once", wait, resumable=False)
app.run()
"""


def arn(stack: Stack, thing: str) -> str:
    return f"arn:aws:iot:{stack.endpoints['region']}:{stack.endpoints['account_id']}:thing/{thing}"


@pytest.fixture()
def boards(request: pytest.FixtureRequest) -> Iterator[Callable[..., DeviceProcess]]:
    started: list[DeviceProcess] = []

    def make(
        stack: Stack,
        name: str,
        group: str | None = None,
        app: bool = False,
        heapsize: str | None = None,
        start: bool = True,
        frozen: bool = False,
        profile: str | None = None,
        newest: bool = False,
        **extra: Any,
    ) -> DeviceProcess:
        request.getfixturevalue(
            "frozen_port" if frozen else "newest_port" if newest else "board_port"
        )
        stack.create_thing(name, group=group)
        board = setup_board(stack.state_dir, name, extra=extra or None)
        root = None
        if app:
            root = board / "approot"
            root.mkdir(exist_ok=True)
            shutil.copy(ROOT / "boot.py", root / "boot.py")
            (root / "main.py").write_text(TEST_APP)
        heapsize = heapsize or (FROZEN_HEAP if frozen else HEAP)
        dev = DeviceProcess(
            board,
            heapsize=heapsize,
            root=root,
            frozen=frozen,
            newest=newest,
            profile=profile or BOARD_PROFILE,
        )
        started.append(dev)
        if start:
            dev.start()
        return dev

    yield make
    for d in started:
        d.stop()


def board_path(dev: DeviceProcess, name: str) -> Path:
    return dev.board / name


def create_job(stack: Stack, thing: str, document: dict[str, Any] | str, job_id: str = "") -> str:
    job_id = job_id or unique("job")
    doc = document if isinstance(document, str) else json.dumps(document)
    stack.iot_client().create_job(jobId=job_id, targets=[arn(stack, thing)], document=doc)
    return job_id


def execution(stack: Stack, thing: str, job_id: str) -> dict[str, Any]:
    out = stack.iot_client().describe_job_execution(jobId=job_id, thingName=thing)
    return dict(out["execution"])


def final(stack: Stack, thing: str, job_id: str, timeout: float = 60) -> dict[str, Any]:
    """The execution once it is terminal (polls the service's record)."""
    return dict(
        wait_until(
            lambda: (ex := execution(stack, thing, job_id))["status"] in TERMINAL and ex,
            timeout=timeout,
            what=f"{job_id} to end",
        )
    )


def details(ex: dict[str, Any]) -> dict[str, str]:
    return dict(ex.get("statusDetails", {}).get("detailsMap", {}))


# An Agent with no network or board behind it (its Link and Board as far as __init__ and the
# message path use them), for snippets that drive one method directly.
OFFLINE_AGENT = """
from iotjobs import agent


class L:
    t = None
    on_fail = None

    def set_on_connect(self, fn):
        pass


class B:
    def rand(self, n):
        return 0
"""
