"""Fixtures for end-to-end agent tests: simulated boards running the real device code.

``boards(stack, name=None, group=None, app=False)`` provisions a thing on the stack, makes its
board folder and powers it on (a :class:`jobsctl.device.DeviceProcess`); every board is
powered off after the test. With ``app=True`` the board runs the test application below
(its own main.py registering extra handlers, as a product would) instead of the plain main.py.
With ``frozen=True`` it runs ``build/micropython-frozen`` (the device code frozen in, as
firmware/manifest.py freezes it for a board), rebuilt first if lib/ or sim/ changed.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from plugin_stack import unique, wait_until

from jobsctl.device import ROOT, DeviceProcess, setup_board, unix_port
from jobsctl.stack import Stack

# The e2e heaps. HEAP: the device code as `make deploy` puts it on a stock firmware, .mpy
# files whose bytecode and strings are loaded into the heap (~75 KB with every module loaded).
# FROZEN_HEAP: the same code frozen into the firmware, where the heap holds only live objects
# (the modules' dicts and functions, ~21 KB, and what the agent allocates). One tls.SSLContext
# is ~3 KB of heap here, as on a board. `make bench` finds the smallest heap the agent and an
# OTA job run in, both ways.
HEAP = "128k"
FROZEN_HEAP = "64k"
# An OTA (or bundle) job: the agent plus a second TLS connection (HTTPS), the block buffer and
# ECDSA. `make bench` measured its smallest heap at 136 KB as .mpy files and 84 KB frozen; the
# tests leave room for the heap's fragmentation.
OTA_HEAP = "192k"
FROZEN_OTA_HEAP = "112k"


@pytest.fixture(scope="session")
def frozen_port() -> Path:
    """build/micropython-frozen, up to date with lib/ and sim/ (make decides, one at a time)."""
    with open(ROOT / "build" / ".frozen.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(
            ["make", "-s", "micropython-frozen"], cwd=ROOT, capture_output=True, text=True
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return unix_port(frozen=True)


# A product's main.py: its own handlers, then the agent. `wait` runs until the file named by
# the document exists on the board (the test creates it), checking for cancellation; it counts
# its runs in its persisted state so that a resumed run is visible.
TEST_APP = """\
from iotjobs import agent, app


def wait(ctx, doc):
    ctx.state["runs"] = ctx.state.get("runs", 0) + 1
    ctx.save()
    ctx.log("waiting for %s (run %d)" % (doc["until"], ctx.state["runs"]))
    while True:
        try:
            open(doc["until"]).close()
            break
        except OSError:
            pass
        ctx.check()
        ctx.board.sleep_ms(20)
    return {"reason": "done", "runs": str(ctx.state["runs"])}


def crash(ctx, doc):
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
        **extra: Any,
    ) -> DeviceProcess:
        if frozen:
            request.getfixturevalue("frozen_port")
        stack.create_thing(name, group=group)
        board = setup_board(stack.state_dir, name, extra=extra or None)
        root = None
        if app:
            root = board / "approot"
            root.mkdir(exist_ok=True)
            shutil.copy(ROOT / "boot.py", root / "boot.py")
            (root / "main.py").write_text(TEST_APP)
        heapsize = heapsize or (FROZEN_HEAP if frozen else HEAP)
        dev = DeviceProcess(board, heapsize=heapsize, root=root, frozen=frozen)
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
    terminal = {"SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED"}
    return dict(
        wait_until(
            lambda: (ex := execution(stack, thing, job_id))["status"] in terminal and ex,
            timeout=timeout,
            what=f"{job_id} to end",
        )
    )


def details(ex: dict[str, Any]) -> dict[str, str]:
    return dict(ex.get("statusDetails", {}).get("detailsMap", {}))
