"""The MQTT-stream download loop (iotjobs.stream.fetch) allocates nothing per block.

bench/ota_mqtt_pipeline.py runs the loop with the agent's real MQTT session (umqtt.simple over
mutual TLS to the stack's broker), the agent's real Context and the real stream service, into
the simulated flash, under ``micropython.heap_lock()``: an allocation anywhere in a block's path
(packet read, JSON/base64 or CBOR decode, SHA-256, flash write) is a MemoryError. Once per
window of blocks the request's publish and the agent's MQTT poll run unlocked and are counted,
as are checkpoints and progress reports.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from plugin_stack import unique

import upy
from jobsctl import image, otajob
from jobsctl.device import setup_board
from jobsctl.stack import Stack

WINDOW = 16  # iotjobs.stream._WINDOW: blocks asked for per request

SCRIPT = Path(__file__).parent.parent / "bench" / "ota_mqtt_pipeline.py"


def stream_board(stack: Stack, data: bytes) -> tuple[Path, str]:
    thing = unique("msb")
    stack.create_thing(thing)
    board = setup_board(stack.state_dir, thing, partition_size=0x100000)
    key = f"bench/{unique('obj')}.bin"
    stack.upload(key, data)
    sid = unique("mst")
    stack.iot_client().create_stream(
        streamId=sid,
        files=otajob.stream_files(stack.endpoints["bucket"], key),
        roleArn=otajob.stream_role(stack.endpoints["account_id"]),
    )
    return board, sid


def run(
    micropython: Any,
    board: Path,
    sid: str,
    size: int,
    fmt: str,
    heapsize: str = "256k",
    lock: bool = True,
    port: Path = upy.MICROPYTHON,
) -> list[str]:
    args = (sid, str(size), fmt, "3600000") + (() if lock else ("3600000", "unlocked"))
    r = micropython(
        script=SCRIPT, args=args, heapsize=heapsize, cwd=board, timeout=120, port=port
    ).check()
    last = r.out.strip().splitlines()[-1]  # the agent's own log lines come first
    return last.split() + ([r.err] if not last.startswith("OK") else [])


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_stream_loop_writes_the_image_with_the_heap_locked(
    micropython: Any, stack_session: Stack, fmt: str
) -> None:
    data = os.urandom(300 * 1024 + 77)
    board, sid = stream_board(stack_session, data)
    out = run(micropython, board, sid, len(data), fmt)
    assert out[0] == "OK", " ".join(out)
    assert int(out[1]) == len(data)
    assert out[3] == hashlib.sha256(data).hexdigest()
    blocks = -(-len(data) // 4096)
    assert int(out[11]) == blocks
    assert int(out[10]) == -(-blocks // WINDOW)  # one request per window of blocks
    assert int(out[7]) == (blocks - 1) // 16  # an offset checkpoint every 16 blocks
    slot = image.slot_image(board, "ota_1")
    assert slot[: len(data)] == data
    assert set(slot[len(data) : blocks * 4096]) == {0xFF}


def test_stream_loop_runs_in_48k_with_the_library_frozen(
    micropython: Any, stack_session: Stack, frozen_port: Path
) -> None:
    data = os.urandom(200 * 1024)
    board, sid = stream_board(stack_session, data)
    out = run(micropython, board, sid, len(data), "json", heapsize="48k", port=frozen_port)
    assert out[0] == "OK", " ".join(out)
    assert out[3] == hashlib.sha256(data).hexdigest()
