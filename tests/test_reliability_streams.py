"""Reliability of OTA over MQTT streams: the MQTT connection cut at a random byte of the block
traffic (a proxy in front of the broker), and power loss at random moments of a stream OTA.
Every trial asserts the end state as tests/test_reliability.py does: terminal with a reason,
a valid image booting, and after a success the slot holding exactly the image. `make test`
runs one trial of each; `make reliability` the full counts (tests/plugin_reliability.py)."""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from plugin_agent import OTA_HEAP
from plugin_stack import unique
from test_ota_mqtt import stream_job
from test_reliability import SIZE, conclude

from jobsctl import image, otajob
from jobsctl.device import DeviceProcess
from jobsctl.faultproxy import Fault, FaultProxy
from jobsctl.stack import Stack

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return otajob.signing_key(tmp_path_factory.mktemp("signing"))


@pytest.fixture(scope="module")
def firmware() -> bytes:
    return image.build_app_image("2.0.0", size=SIZE)


def stream_board(
    stack: Stack, boards: Callable[..., DeviceProcess], signing: Path, fmt: str, port: int = 0
) -> DeviceProcess:
    extra = {"port": port} if port else {}
    dev = boards(
        stack,
        unique("rels"),
        heapsize=OTA_HEAP,
        start=False,
        ota_key_file="k.pem",
        timeout_ms=3000,
        ota_stream_format=fmt,
        **extra,
    )
    shutil.copy(image.public_key_path(signing), dev.board / "k.pem")
    dev.start()
    dev.wait_for("no pending job")
    return dev


def test_mqtt_stream_cut_at_random_blocks_resumes_and_the_image_matches(
    stack_session: Stack,
    boards: Callable[..., DeviceProcess],
    signing: Path,
    firmware: bytes,
    trials: Callable[[str, int], int],
    record: Callable[[str, bool, str], None],
) -> None:
    rng = random.Random(17)
    n = trials("stream-cut", 1)
    failures = []
    with FaultProxy("127.0.0.1", stack_session.mqtt_port) as proxy:
        for i in range(n):
            fmt = "json" if i % 2 == 0 else "cbor"
            # Bytes from the broker on the job's connection: the blocks (base64 in JSON) and
            # the Jobs replies; a cut anywhere in there lands inside some block.
            at = rng.randrange(5_000, SIZE)
            proxy.plan(Fault.none(), Fault.cut(at))  # the first connection is the idle one
            dev = stream_board(stack_session, boards, signing, fmt, proxy.port)
            proxy.cut_all()  # the job starts on a fresh connection, the planned one
            job, _ = stream_job(stack_session, dev.board.name, firmware, signing)
            why = conclude(stack_session, dev, job, firmware, True, 120)
            record("stream-cut", not why, f"{fmt} cut@{at}: {why}" if why else "")
            failures += [why] if why else []
    assert not failures
    assert proxy.stats.connections >= 3 * n, proxy.stats


def test_power_loss_during_a_stream_ota_never_leaves_a_job_stuck(
    stack_session: Stack,
    boards: Callable[..., DeviceProcess],
    signing: Path,
    firmware: bytes,
    trials: Callable[[str, int], int],
    record: Callable[[str, bool, str], None],
) -> None:
    rng = random.Random(19)
    n = trials("stream-power", 1)
    failures = []
    for i in range(n):
        fmt = "json" if i % 2 == 0 else "cbor"
        dev = stream_board(stack_session, boards, signing, fmt)
        job, _ = stream_job(stack_session, dev.board.name, firmware, signing)
        delay = rng.uniform(0.0, 2.0)  # download, verify, set_boot, reboot, self-test
        time.sleep(delay)  # the fault's timing, not synchronisation
        dev.kill()
        dev.start()
        why = conclude(stack_session, dev, job, firmware, False, 120)
        record("stream-power", not why, f"{fmt} cut at {delay:.2f}s: {why}" if why else "")
        failures += [why] if why else []
    assert not failures
