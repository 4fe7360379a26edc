"""Delta OTA over AWS IoT MQTT streams, end to end on the local stack: ``jobsctl job ota --from
OLD.bin --protocol mqtt|both`` puts the patch into the job's stream (file 1, the full image file
0), and the device reads it through its one MQTT session, block by block straight into the
decoder (lib/iotjobs/stream.py's Blocks feeding lib/iotjobs/delta.py's Patcher): JSON and CBOR,
a base mismatch, a corrupted patch with and without the full image to fall back to, and a reset
while the patch is applied."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from plugin_agent import arn, details, final
from plugin_stack import unique, wait_until
from test_delta import BASE, assert_a_corruption_reason, corrupt, edited, new_version
from test_ota_e2e import (
    Boards,
    assert_old_firmware_boots,
    ota_board,
    running_version,
    thing_of,
)

import upy
from jobsctl import delta, image, otajob
from jobsctl.device import setup_board
from jobsctl.stack import Stack

IN = 1024  # iotjobs.delta._IN: the patch's stream blocks (one decoder read each)
WINDOW = 16  # iotjobs.stream._WINDOW: blocks asked for per request
SCRIPT = Path(__file__).parent.parent / "bench" / "delta_mqtt_apply.py"


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return otajob.signing_key(tmp_path_factory.mktemp("signing"))


def log(dev: Any) -> str:
    return "\n".join(dev.lines)


def end(stack: Stack, dev: Any, job: str, timeout: float = 120) -> dict[str, Any]:
    """The job's final execution on ``dev`` (the board's console in the failure, if none)."""
    try:
        return final(stack, thing_of(dev), job, timeout=timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{log(dev)}") from None


@pytest.mark.parametrize(
    ("fmt", "protocol", "prefer", "no_full", "frozen"),
    [
        ("json", "mqtt", None, False, False),
        ("cbor", "mqtt", None, True, False),
        ("json", "both", "http", False, False),
        ("cbor", "mqtt", None, False, True),  # the library frozen in, in its smaller heap
    ],
)
def test_delta_job_over_mqtt_streams_from_1_0_0_to_1_1_0_succeeds(
    stack_session: Stack,
    boards: Boards,
    signing: Path,
    tmp_path: Path,
    capsys: Any,
    fmt: str,
    protocol: str,
    prefer: str | None,
    no_full: bool,
    frozen: bool,
) -> None:
    from jobsctl import cli

    extra: dict[str, Any] = {"ota_protocol": prefer} if prefer else {}
    dev = ota_board(stack_session, boards, signing, frozen=frozen, ota_stream_format=fmt, **extra)
    new = new_version("1.1.0")
    (tmp_path / "new.bin").write_bytes(new)
    (tmp_path / "old.bin").write_bytes(BASE)
    job = unique("dmq")
    argv = ["job", "ota", job, "--state-dir", str(stack_session.state_dir)]
    argv += ["--targets", thing_of(dev), "--file", str(tmp_path / "new.bin")]
    argv += ["--from", str(tmp_path / "old.bin"), "--key", str(signing)]
    argv += ["--protocol", protocol] + (["--no-full"] if no_full else [])
    assert cli.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)["document"]
    d = doc["delta"]
    if no_full:  # nothing to fall back to: neither a stream file nor a URL for the image
        assert "stream" not in doc and "file_id" not in doc and "url" not in doc
    else:
        assert doc["stream"] == job and doc["file_id"] == 0  # the full image, to fall back to
        assert ("url" in doc) == (protocol == "both")
    assert d["stream"] == job and d["file_id"] == otajob.DELTA_FILE_ID
    assert ("url" in d) == (protocol == "both")
    assert d["base_sha256"] == hashlib.sha256(BASE).hexdigest() and d["size"] < len(new) // 10
    files = stack_session.iot_client().describe_stream(streamId=job)["streamInfo"]["files"]
    ids = [otajob.DELTA_FILE_ID] if no_full else [0, otajob.DELTA_FILE_ID]
    assert sorted(f["fileId"] for f in files) == ids
    ex = end(stack_session, dev, job)
    assert ex["status"] == "SUCCEEDED", log(dev)
    assert details(ex)["reason"] == "running 1.1.0" and running_version(dev) == "1.1.0"
    assert "step delta" in log(dev) and "step download" not in log(dev)
    blocks = -(-d["size"] // IN)
    said = f"stream: {blocks} patch blocks in {-(-blocks // WINDOW)} requests"
    if prefer == "http":  # both offered, the board prefers HTTPS: the patch comes that way
        assert "stream:" not in log(dev)
    else:
        assert said in log(dev), log(dev)
        assert "https" not in log(dev).lower()
    assert image.slot_image(dev.board, "ota_1")[: len(new)] == new


def stream_delta(
    stack: Stack,
    thing: str,
    new: bytes,
    old: bytes,
    signing: Path,
    patch: bytes | None = None,
    full: bool = True,
) -> str:
    """A delta job whose patch (and full image, with ``full``) only an MQTT stream offers."""
    endpoints = stack.endpoints
    doc, _ = otajob.prepare(stack, new, key=signing)  # uploads the image as object_key(new)
    p = delta.create(old, new)
    data = p.data if patch is None else patch
    key = f"ota/test-{hashlib.sha256(data).hexdigest()[:16]}.patch"
    stack.upload(key, data)
    sid = unique("dms")
    files = otajob.stream_files(endpoints["bucket"], otajob.object_key(new)) if full else []
    files += otajob.stream_files(endpoints["bucket"], key, otajob.DELTA_FILE_ID)
    stack.iot_client().create_stream(
        streamId=sid, files=files, roleArn=otajob.stream_role(endpoints["account_id"])
    )
    del doc["url"]
    if full:
        doc.update(stream=sid, file_id=0)
    doc["delta"] = {k: v for k, v in p.document("").items() if k != "url"}
    doc["delta"].update(size=len(data), stream=sid, file_id=otajob.DELTA_FILE_ID)
    job = unique("dms")
    stack.iot_client().create_job(jobId=job, targets=[arn(stack, thing)], document=json.dumps(doc))
    return job


def test_a_patch_for_another_base_is_rejected_before_the_stream_is_asked(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    other = image.build_app_image("0.9.0", size=64 * 1024)
    job = stream_delta(stack_session, thing_of(dev), new_version("1.1.0"), other, signing)
    ex = end(stack_session, dev, job)
    assert ex["status"] == "REJECTED", log(dev)
    assert details(ex)["reason"] == (
        "delta base mismatch: the running image is not the patch's base"
    )
    assert "step delta" not in log(dev) and "step download" not in log(dev)
    assert "stream:" not in log(dev)
    assert_old_firmware_boots(dev)


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_a_corrupted_patch_over_mqtt_fails_and_the_old_firmware_still_boots(
    stack_session: Stack, boards: Boards, signing: Path, fmt: str
) -> None:
    dev = ota_board(stack_session, boards, signing, ota_stream_format=fmt)
    new = new_version("1.1.0")
    bad = corrupt(delta.create(BASE, new, "none").data)
    job = stream_delta(stack_session, thing_of(dev), new, BASE, signing, bad, full=False)
    ex = end(stack_session, dev, job)
    assert ex["status"] == "FAILED", log(dev)
    assert_a_corruption_reason(details(ex)["reason"])
    assert_old_firmware_boots(dev)


def test_a_corrupted_patch_over_mqtt_falls_back_to_the_full_image_in_the_stream(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    new = new_version("1.1.0")
    bad = corrupt(delta.create(BASE, new).data)
    job = stream_delta(stack_session, thing_of(dev), new, BASE, signing, bad)
    ex = end(stack_session, dev, job)
    assert ex["status"] == "SUCCEEDED", log(dev)
    assert running_version(dev) == "1.1.0"
    assert "delta failed" in log(dev) and "step download" in log(dev)
    blocks = -(-len(new) // 4096)  # the full image, file 0, in the slot's 4 KB blocks
    assert f"stream: {blocks} blocks in" in log(dev), log(dev)
    assert image.slot_image(dev.board, "ota_1")[: len(new)] == new


def test_a_reset_while_the_patch_streams_continues_from_the_checkpoint(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    from harness.faultproxy import Fault, FaultProxy

    new = new_version("1.3.0", size=300_000)  # 1.0.0's first 64 KB, then new bytes
    with FaultProxy("127.0.0.1", stack_session.mqtt_port) as proxy:
        # The job's connection stalls once ~100 KB of patch came (base64 in JSON); checkpoints
        # are persisted every 16 KB of patch before that: the power goes then.
        proxy.plan(Fault.none(), Fault.stall(140_000, seconds=60))
        dev = ota_board(stack_session, boards, signing, port=proxy.port)
        proxy.cut_all()  # the job starts on a fresh connection, the planned one
        job = stream_delta(stack_session, thing_of(dev), new, BASE, signing, full=False)
        state = dev.board / "jobstate.json"
        wait_until(lambda: state.exists() and '"ck"' in state.read_text(), 60, "a checkpoint")
        dev.kill()
        dev.start()
        ex = end(stack_session, dev, job)
    assert ex["status"] == "SUCCEEDED", log(dev)
    assert running_version(dev) == "1.3.0"
    assert "resuming the patch at" in log(dev), log(dev)
    assert image.slot_image(dev.board, "ota_1")[: len(new)] == new


# ---------------------------------------------------------------- the hot loop, heap locked


@pytest.mark.parametrize(
    ("fmt", "compression", "port"),
    [("json", "heatshrink", "unix"), ("cbor", "none", "unix"), ("json", "heatshrink", "frozen")],
)
def test_the_patch_streams_into_the_decoder_with_the_heap_locked(
    micropython: Any, stack_session: Stack, fmt: str, compression: str, port: str, request: Any
) -> None:
    # bench/delta_mqtt_apply.py: the agent's real MQTT session and Context, the stack's stream
    # service, stream.Blocks feeding delta.Patcher under micropython.heap_lock(); the request
    # of each window of blocks and the agent's MQTT poll run unlocked and are counted.
    old = image.build_app_image("1.0.0", size=150_000)  # the board boots it: a real image
    new = edited(old, 12) + random.Random(13).randbytes(40_000)  # edits and new bytes
    patch = delta.create(old, new, compression)
    thing = unique("dml")
    stack_session.create_thing(thing)
    board = setup_board(stack_session.state_dir, thing, partition_size=0x100000)
    with (board / "flash" / "ota_0.bin").open("r+b") as f:
        f.write(old)
    key = f"bench/{unique('patch')}.patch"
    stack_session.upload(key, patch.data)
    sid = unique("dml")
    stack_session.iot_client().create_stream(
        streamId=sid,
        files=otajob.stream_files(stack_session.endpoints["bucket"], key, otajob.DELTA_FILE_ID),
        roleArn=otajob.stream_role(stack_session.endpoints["account_id"]),
    )
    window = 1 << delta.WINDOW_BITS if compression == "heatshrink" else 0
    args = [sid, otajob.DELTA_FILE_ID, len(patch.data), len(old), len(new), fmt, window]
    exe = request.getfixturevalue("frozen_port") if port == "frozen" else upy.MICROPYTHON
    heap = "48k" if port == "frozen" else "256k"
    r = micropython(
        script=SCRIPT, args=tuple(map(str, args)), heapsize=heap, cwd=board, timeout=120, port=exe
    ).check()
    out = r.out.strip().splitlines()[-1].split()  # the agent's own log lines come first
    assert out[0] == "OK", r.out + r.err
    assert out[2] == hashlib.sha256(new).hexdigest() and out[3] == patch.sha256
    blocks = -(-len(patch.data) // IN)
    assert int(out[11]) == blocks and blocks > 2 * WINDOW  # several windows
    assert int(out[10]) == -(-blocks // WINDOW)  # one request per window of blocks
    assert image.slot_image(board, "ota_1")[: len(new)] == new


# ---------------------------------------------------------------- the document, up front

PARSE = """
import json, sys
from iotjobs import ota
from iotjobs.agent import Rejected

class Ctx:
    config = {}

for line in open(sys.argv[1]):
    try:
        job = ota.check(Ctx(), json.loads(line), 0x180000)
        d = job["delta"]
        print("OK", job["url"] is not None, job["stream"], d["url"] is not None, d["stream"],
              d["fileid"])
    except Rejected as e:
        print("REJECTED", e.args[0])
"""
SHA = "ab" * 32
PATCH = {"size": 900, "sha256": "cd" * 32, "base_size": 4096, "base_sha256": "ef" * 32}
DOC = {"operation": "ota", "size": 1000, "sha256": SHA, "version": "1.1.0"}
URL = "https://s3.example.com/b/x?X-Amz-Signature=ab"


@pytest.mark.parametrize(
    ("doc", "outcome"),
    [
        ({**DOC, "delta": {**PATCH, "stream": "j", "file_id": 1}}, "OK False None False j 1"),
        (
            {**DOC, "stream": "j", "file_id": 0, "delta": {**PATCH, "stream": "j", "file_id": 1}},
            "OK False j False j 1",
        ),
        (
            {**DOC, "url": URL, "delta": {**PATCH, "url": URL, "stream": "j", "file_id": 1}},
            "OK True None True j 1",
        ),
        (
            {**DOC, "delta": {**PATCH, "stream": "no/slash", "file_id": 1}},
            "REJECTED 'stream' must be a stream name (1-128 of [a-zA-Z0-9_-])",
        ),
        (
            {**DOC, "delta": {**PATCH, "stream": "j", "file_id": 256}},
            "REJECTED 'file_id' must be an integer 0-255",
        ),
        ({**DOC, "delta": PATCH}, "REJECTED 'url' must be a URL string"),
    ],
)
def test_delta_stream_documents_are_checked_before_anything_is_downloaded(
    micropython: Any, tmp_path: Path, doc: dict[str, Any], outcome: str
) -> None:
    (tmp_path / "docs.jsonl").write_text(json.dumps(doc) + "\n")
    r = micropython(code=PARSE, args=(str(tmp_path / "docs.jsonl"),), heapsize="256k").check()
    assert r.out.strip() == outcome
