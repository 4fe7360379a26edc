"""Reliability of OTA over MQTT streams: the MQTT connection cut at a random byte of the block
traffic (a proxy in front of the broker), power loss at random moments of a stream OTA, and
fuzzed requests on the stream topics.
Every trial asserts the end state as tests/test_reliability.py does: terminal with a reason,
a valid image booting, and after a success the slot holding exactly the image. `make test`
runs one trial of each; `make reliability` the full counts (tests/plugin_reliability.py)."""

from __future__ import annotations

import base64
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from plugin_agent import OTA_HEAP
from plugin_stack import unique
from test_ota_mqtt import stream_job
from test_reliability import SIZE, conclude, fuzz_settings
from test_streams import StreamClient

from harness.faultproxy import Fault, FaultProxy
from jobsctl import image, otajob
from jobsctl.device import DeviceProcess
from jobsctl.service.streams import CODES
from jobsctl.stack import Stack

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return otajob.signing_key(tmp_path_factory.mktemp("signing"))


@pytest.fixture(scope="module")
def firmware() -> bytes:
    return image.build_app_image("2.0.0", size=SIZE)


@pytest.fixture(scope="module")
def image_stream(stack_session: Stack) -> str:
    data = bytes(range(256)) * 64  # 16 KB: four 4 KB blocks
    stack_session.upload("fuzz/stream.bin", data)
    sid = unique("fuzzs")
    stack_session.iot_client().create_stream(
        streamId=sid,
        files=otajob.stream_files(stack_session.endpoints["bucket"], "fuzz/stream.bin"),
        roleArn=otajob.stream_role(stack_session.endpoints["account_id"]),
    )
    return sid


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
    rng: random.Random,
) -> None:
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
    rng: random.Random,
) -> None:
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


STREAM_KEYS = st.sampled_from(["c", "s", "f", "l", "o", "n", "b", "x"])
STREAM_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.text(max_size=80),
    st.binary(max_size=40),
    st.lists(st.integers(), max_size=3),
)


def _encode(value: Any, fmt: str) -> bytes:
    if fmt == "cbor":
        return cbor2.dumps(value)
    return json.dumps(value, default=lambda b: base64.b64encode(b).decode()).encode()


def test_fuzzed_stream_requests_get_documented_codes_and_the_service_stays_up(
    stack_session: Stack,
    image_stream: str,
    trials: Callable[[str, int], int],
    record: Callable[[str, bool, str], None],
    seed: int,
) -> None:
    # Hypothesis-made payloads (raw bytes, or maps of the request keys with odd values) on
    # get/describe and on unknown verbs, in JSON and CBOR; after each, a well-formed describe
    # must be answered: every rejection in between carries one of the documented codes.
    clients = {fmt: StreamClient(stack_session, image_stream, fmt) for fmt in ("json", "cbor")}
    n = trials("streamfuzz", 25)
    bad: list[str] = []
    try:

        @fuzz_settings(n, seed)
        @given(
            fmt=st.sampled_from(["json", "cbor"]),
            verb=st.sampled_from(["get", "describe", "bogus"]),
            payload=st.one_of(
                st.binary(max_size=64),
                st.dictionaries(STREAM_KEYS, STREAM_VALUES, max_size=7),
            ),
        )
        def trial(fmt: str, verb: str, payload: Any) -> None:
            c = clients[fmt]
            raw = payload if isinstance(payload, bytes) else _encode(payload, fmt)
            if isinstance(payload, dict) and payload.get("n") and isinstance(payload["n"], int):
                raw = _encode({**payload, "n": min(payload["n"], 4)}, fmt)  # a few blocks
            since = c.send(verb, None, raw=raw)
            token = f"probe-{since}"
            c.send("describe", {"c": token})
            got = c.wait(
                since, lambda m: any(b.get("c") == token for _, b in m if isinstance(b, dict))
            )
            codes = [b.get("o") for t, b in got if t.startswith("rejected/")]
            wrong = [x for x in codes if x not in CODES]
            record("streamfuzz", not wrong, f"{verb} {raw[:40]!r}: {wrong}" if wrong else "")
            if wrong:
                bad.append(f"{verb} {raw[:40]!r}: {wrong}")

        trial()
    finally:
        for c in clients.values():
            c.close()
    assert not bad, bad[:5]
