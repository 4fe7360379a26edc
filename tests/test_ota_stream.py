"""The OTA download loop itself (iotjobs.fetch.blocks) allocates nothing per block.

bench/ota_pipeline.py (also the bench's pipeline) runs the handler's real loop with the agent's
real Context over a real HTTPS response (tests/plugin_http.py) into the simulated flash, under
``micropython.heap_lock()``: an allocation anywhere in a block's path is a MemoryError. The
checkpoints, progress reports and MQTT reads that the loop does now and then reach a stand-in
agent that unlocks the heap for them and counts them. The same pipeline also runs in 48 KB of
heap with the library frozen into the port (build/micropython-frozen), as on a board.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

import upy
from jobsctl import image
from jobsctl.pki import CertificateAuthority

SCRIPT = Path(__file__).parent.parent / "bench" / "ota_pipeline.py"
SAVE_EVERY = 16  # iotjobs.fetch._SAVE_EVERY


@pytest.fixture()
def board(tmp_path: Path) -> Path:
    image.init_sim_flash(tmp_path, version="1.0.0", partition_size=0x100000)
    return tmp_path


def run(
    micropython: Any,
    board: Path,
    url: str,
    ca: CertificateAuthority,
    interval_ms: int,
    lock: bool = True,
    heapsize: str = "256k",
    port: Path = upy.MICROPYTHON,
) -> list[str]:
    args = (url, str(ca.cert_path), str(interval_ms)) + (() if lock else ("unlocked",))
    r = micropython(
        script=SCRIPT, args=args, heapsize=heapsize, cwd=board, timeout=60, port=port
    ).check()
    return r.out.split()


def test_download_loop_writes_the_image_with_the_heap_locked(
    micropython, board, https_server, ca
) -> None:
    data = os.urandom(600 * 1024 + 123)  # whole blocks and a partial last one
    https_server.objects["img"] = data
    out = run(micropython, board, https_server.url("/obj/img"), ca, 3_600_000)
    assert out[0] == "OK", " ".join(out)
    assert int(out[1]) == len(data)
    assert out[3] == hashlib.sha256(data).hexdigest()
    blocks = -(-len(data) // 4096)
    # An offset checkpoint every 16 blocks (not after the last one), the last one persisted.
    assert int(out[7]) == (blocks - 1) // SAVE_EVERY
    assert int(out[10]) == (blocks - 1) // SAVE_EVERY * SAVE_EVERY * 4096
    assert int(out[8]) == 1  # the report made before the loop; the next is an hour away
    assert int(out[11]) == 0  # no import ran in the loop (heap_lock cannot see one)
    slot = image.slot_image(board, "ota_1")
    assert slot[: len(data)] == data
    assert set(slot[len(data) : blocks * 4096]) == {0xFF}  # the last block padded


def test_due_progress_reports_are_sent_from_the_loop(micropython, board, https_server, ca) -> None:
    data = os.urandom(64 * 1024)
    https_server.objects["img"] = data
    out = run(micropython, board, https_server.url("/obj/img"), ca, 0, lock=False)
    assert out[0] == "OK", " ".join(out)
    assert int(out[8]) == 1 + len(data) // 4096  # interval 0: a report after every block


def test_download_pipeline_runs_in_48k_of_heap_with_the_library_frozen(
    micropython, board, https_server, ca, frozen_port
) -> None:
    # HTTPS (one TLS context), the block buffer, SHA-256 and the flash, with the agent's Context:
    # what an OTA download needs on a board whose firmware carries the library frozen.
    data = os.urandom(300 * 1024)
    https_server.objects["img"] = data
    url = https_server.url("/obj/img")
    out = run(micropython, board, url, ca, 3_600_000, heapsize="48k", port=frozen_port)
    assert out[0] == "OK", " ".join(out)
    assert out[3] == hashlib.sha256(data).hexdigest()
    assert image.slot_image(board, "ota_1")[: len(data)] == data
