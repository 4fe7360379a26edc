"""Delta OTA: detools patches made by ``jobsctl image delta`` / ``job ota --from``, applied by
the device's own decoder (lib/iotjobs/delta.py) while they stream, end to end on the local stack.

The decoder is written from detools' format; these tests pin it against detools itself: every
patch detools makes (compression none and heatshrink, several windows) rebuilds the new image
byte for byte, under ``micropython.heap_lock()`` (bench/delta_apply.py).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from plugin_agent import arn, details, final
from plugin_stack import unique
from test_ota_e2e import (
    Boards,
    assert_old_firmware_boots,
    ota_board,
    running_version,
    thing_of,
)

from jobsctl import delta, image, otajob
from jobsctl.errors import JobsctlError
from jobsctl.stack import Stack

SCRIPT = Path(__file__).parent.parent / "bench" / "delta_apply.py"
RESUME = Path(__file__).parent / "device" / "delta_resume.py"
SLOT = 0x100000
BASE = image.build_app_image("1.0.0", size=64 * 1024)  # what a new simulated board runs


def new_version(version: str, size: int = 64 * 1024) -> bytes:
    """``version`` built from 1.0.0's code bytes: a small change, as in a real release."""
    return image.build_app_image(version, size=size, seed="iotjobs-sim/1.0.0")


def edited(old: bytes, seed: int) -> bytes:
    """``old`` with a few insertions, deletions and overwrites (moves the base position)."""
    rnd = random.Random(seed)
    b = bytearray(old)
    for _ in range(6):
        at = rnd.randrange(len(b))
        op = rnd.randrange(3)
        if op == 0:
            b[at:at] = rnd.randbytes(rnd.randrange(1, 300))
        elif op == 1:
            del b[at : at + rnd.randrange(1, 300)]
        else:
            b[at : at + 40] = rnd.randbytes(40)
    return bytes(b)


# ---------------------------------------------------------------- the device's decoder


def board_with(folder: Path, base: bytes) -> Path:
    image.init_sim_flash(folder, partition_size=SLOT)
    with (folder / "flash" / "ota_0.bin").open("r+b") as f:
        f.write(base)
    return folder


def apply(
    micropython: Any, folder: Path, patch: bytes, base: bytes, size: int, locked: bool = True
) -> list[str]:
    # Locked: an allocation is a MemoryError; a failure (raising allocates) runs unlocked.
    (folder / "p.bin").write_bytes(patch)
    args = ("p.bin", str(len(base)), str(size)) + (() if locked else ("unlocked",))
    r = micropython(script=SCRIPT, args=args, heapsize="128k", cwd=folder, timeout=120).check()
    return r.out.split()


@pytest.mark.parametrize(
    ("compression", "window", "lookahead"),
    [("none", 8, 4), ("heatshrink", 8, 4), ("heatshrink", 10, 5), ("heatshrink", 12, 11)],
)
def test_the_decoder_rebuilds_what_detools_patched_with_the_heap_locked(
    micropython: Any, tmp_path: Path, compression: str, window: int, lookahead: int
) -> None:
    old = random.Random(1).randbytes(150_000)
    new = edited(old, 2)
    patch = delta.create(old, new, compression, window, lookahead)
    out = apply(micropython, board_with(tmp_path, old), patch.data, old, len(new))
    assert out[0] == "OK", " ".join(out)
    assert out[2] == hashlib.sha256(new).hexdigest()
    assert out[7] == patch.sha256
    assert int(out[6]) == -(-len(new) // 4096) - 1  # ctx.check() after every whole block
    slot = image.slot_image(tmp_path, "ota_1")
    assert slot[: len(new)] == new
    assert set(slot[len(new) : -(-len(new) // 4096) * 4096]) <= {0xFF}


@pytest.mark.parametrize(
    ("compression", "window", "lookahead"),
    [("none", 8, 4), ("heatshrink", 8, 4), ("heatshrink", 10, 7)],
)
def test_the_patch_continues_from_any_checkpoint_to_the_same_image(
    micropython: Any, tmp_path: Path, compression: str, window: int, lookahead: int
) -> None:
    old = random.Random(7).randbytes(120_000)
    new = edited(old, 8) + random.Random(9).randbytes(30_000)  # edits and new bytes
    patch = delta.create(old, new, compression, window, lookahead)
    board_with(tmp_path, old)
    (tmp_path / "p.bin").write_bytes(patch.data)
    every = max(len(patch.data) // 12, 64)  # a dozen checkpoints or so
    args = ("p.bin", str(len(old)), str(len(new)), str(every))
    r = micropython(script=RESUME, args=args, heapsize="256k", cwd=tmp_path, timeout=120)
    out = r.check().out.split()
    assert out[0] == "OK", r.out
    assert int(out[1]) >= 5 and out[2] == hashlib.sha256(new).hexdigest()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p[:-1], "the patch ends early"),
        (lambda p: p + b"\0\0", "the patch has data past its end"),
        (lambda p: bytes([0x20]) + p[1:], "not a sequential detools patch"),
        (lambda p: bytes([0x05]) + p[1:], "patch compression 5 not supported"),
        (lambda p: p[:1] + bytes([0x80]) + p[2:], "the patch makes"),
    ],
)
def test_a_damaged_patch_is_a_clear_failure(
    micropython: Any, tmp_path: Path, damage: Any, reason: str
) -> None:
    old = random.Random(3).randbytes(40_000)
    new = edited(old, 4)
    patch = delta.create(old, new, "none")
    out = apply(micropython, board_with(tmp_path, old), damage(patch.data), old, len(new), False)
    assert out[:2] == ["ERR", "Failed"] and reason in " ".join(out), " ".join(out)


def test_a_heatshrink_window_above_the_device_limit_is_refused(
    micropython: Any, tmp_path: Path
) -> None:
    old = random.Random(5).randbytes(20_000)
    new = edited(old, 6)
    data = bytearray(delta.create(old, new, "heatshrink", 8, 4).data)
    # The heatshrink header follows the patch header (1 byte) and the new size (3 bytes here).
    assert data[4] == (8 - 4) << 4 | (4 - 3)
    data[4] = (13 - 4) << 4 | (4 - 3)
    out = apply(micropython, board_with(tmp_path, old), bytes(data), old, len(new), False)
    assert out[:2] == ["ERR", "Failed"] and "window 2^13" in " ".join(out), " ".join(out)


# ---------------------------------------------------------------- host


def test_jobsctl_image_delta_writes_a_patch_and_describes_it(tmp_path: Path, capsys: Any) -> None:
    from jobsctl import cli

    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(BASE)
    new.write_bytes(new_version("1.1.0"))
    out = tmp_path / "1.1.0.patch"
    argv = ["image", "delta", "--from", str(old), "--to", str(new), "-o", str(out)]
    assert cli.main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size"] == out.stat().st_size and info["share"] < 0.10
    assert info["base_sha256"] == hashlib.sha256(BASE).hexdigest()
    assert info["base_size"] == len(BASE) and info["new_size"] == new.stat().st_size
    assert out.read_bytes()[0] == 0x04  # sequential, heatshrink
    # Never overwrites what is there.
    assert cli.main(argv) == 1
    assert "exists; not overwriting" in capsys.readouterr().err


def test_heatshrink_parameters_outside_the_device_limit_are_refused() -> None:
    assert delta.device_max_window_bits() == 12
    with pytest.raises(JobsctlError, match="window bits 4-12"):
        delta.create(b"a" * 100, b"b" * 100, "heatshrink", 13, 4)
    with pytest.raises(JobsctlError, match="window bits 4-12"):
        delta.create(b"a" * 100, b"b" * 100, "heatshrink", 8, 8)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return otajob.signing_key(tmp_path_factory.mktemp("signing"))


@pytest.mark.parametrize("frozen", [False, True], ids=["mpy", "frozen"])
def test_delta_job_from_1_0_0_to_1_1_0_succeeds_on_the_new_version(
    stack_session: Stack, boards: Boards, signing: Path, tmp_path: Path, capsys: Any, frozen: bool
) -> None:
    # Both ways a board carries the agent, in the OTA tests' heaps (.mpy files, or frozen).
    from jobsctl import cli

    dev = ota_board(stack_session, boards, signing, frozen=frozen)
    new = new_version("1.1.0")
    (tmp_path / "new.bin").write_bytes(new)
    (tmp_path / "old.bin").write_bytes(BASE)
    job = unique("delta")
    argv = ["job", "ota", job, "--state-dir", str(stack_session.state_dir)]
    argv += ["--targets", thing_of(dev), "--file", str(tmp_path / "new.bin")]
    argv += ["--from", str(tmp_path / "old.bin"), "--key", str(signing), "--no-full"]
    assert cli.main(argv) == 0
    doc = json.loads(capsys.readouterr().out)["document"]
    assert "url" not in doc and doc["version"] == "1.1.0"
    d = doc["delta"]
    assert d["base_sha256"] == hashlib.sha256(BASE).hexdigest() and d["base_size"] == len(BASE)
    assert d["size"] < len(new) // 10  # a version bump: descriptor, checksum and hash
    ex = final(stack_session, thing_of(dev), job, timeout=120)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert details(ex)["reason"] == "running 1.1.0" and running_version(dev) == "1.1.0"
    assert any("step delta" in line for line in dev.lines)
    assert not any("step download" in line for line in dev.lines)
    slot = image.slot_image(dev.board, "ota_1")
    assert slot[: len(new)] == new


def delta_doc(
    stack: Stack,
    new: bytes,
    old: bytes,
    signing: Path,
    patch: bytes | None = None,
    full: bool = True,
) -> dict[str, Any]:
    doc, _ = otajob.prepare(stack, new, key=signing)
    p = delta.create(old, new)
    data = p.data if patch is None else patch
    url = stack.upload(f"ota/test-{hashlib.sha256(data).hexdigest()[:16]}.patch", data)
    doc["delta"] = p.document(otajob.placeholder(url))
    doc["delta"]["size"] = len(data)
    if not full:
        del doc["url"]
    return doc


def create(stack: Stack, thing: str, doc: dict[str, Any]) -> str:
    job = unique("delta")
    extra = {"presignedUrlConfig": otajob.presigned_config(stack.endpoints["account_id"])}
    stack.iot_client().create_job(
        jobId=job, targets=[arn(stack, thing)], document=json.dumps(doc), **extra
    )
    return job


def test_a_patch_for_another_base_is_rejected_before_any_download(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    other = image.build_app_image("0.9.0", size=64 * 1024)
    doc = delta_doc(stack_session, new_version("1.1.0"), other, signing)
    ex = final(stack_session, thing_of(dev), create(stack_session, thing_of(dev), doc))
    assert ex["status"] == "REJECTED", "\n".join(dev.lines)
    assert details(ex)["reason"] == (
        "delta base mismatch: the running image is not the patch's base"
    )
    # No step ran: nothing was downloaded.
    assert not any("step delta" in line or "step download" in line for line in dev.lines)
    assert_old_firmware_boots(dev)


def assert_a_corruption_reason(reason: str) -> None:
    """What a job with a corrupted patch ends FAILED with, whichever check catches it first."""
    assert reason in (
        "patch SHA-256 mismatch",
        "the patch reads outside the base",
        "the rebuilt image's SHA-256 does not match",
    ) or reason.startswith("bad "), reason


def corrupt(patch: bytes) -> bytes:
    b = bytearray(patch)
    for i in range(len(b) // 2, len(b) // 2 + 8):
        b[i] ^= 0x5A
    return bytes(b)


def test_a_corrupted_patch_fails_and_the_old_firmware_still_boots(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    new = new_version("1.1.0")
    good = delta.create(BASE, new, "none").data
    doc = delta_doc(stack_session, new, BASE, signing, corrupt(good), full=False)
    ex = final(stack_session, thing_of(dev), create(stack_session, thing_of(dev), doc))
    assert ex["status"] == "FAILED", "\n".join(dev.lines)
    assert_a_corruption_reason(details(ex)["reason"])
    assert_old_firmware_boots(dev)


def test_a_corrupted_patch_falls_back_to_the_full_image_when_offered(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    new = new_version("1.1.0")
    good = delta.create(BASE, new).data
    doc = delta_doc(stack_session, new, BASE, signing, corrupt(good))
    ex = final(stack_session, thing_of(dev), create(stack_session, thing_of(dev), doc), 120)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert running_version(dev) == "1.1.0"
    assert any("delta failed" in line and "full image" in line for line in dev.lines)
    assert any("step download" in line for line in dev.lines)


def test_the_bench_one_line_change_still_finds_its_line() -> None:
    # `make bench` builds the frozen port twice with this one line changed; a refactoring that
    # moves the line must move the bench with it, not break `make bench`.
    from bench import delta as bench_delta
    from jobsctl.checkout import LIB

    text = (LIB / "iotjobs" / "fetch.py").read_text()
    assert text.count(bench_delta.ONE_LINE[1]) == 1


def test_the_bench_section_reports_share_apply_time_and_heap(
    tmp_path: Path, frozen_port: Path
) -> None:
    # What `make bench` runs for each firmware pair, here on a small pair (figures not checked
    # against time: a benchmark is no timed test).
    from bench import delta as bench_delta

    rows = bench_delta.pair_rows(tmp_path, "test pair", BASE, new_version("1.1.0"), 1)
    assert [r[0] for r in rows] == [
        "delta patch, test pair",
        "delta apply (heatshrink), test pair",
        "delta apply (none), test pair",
        "delta apply heap high-water, test pair",
    ]
    assert "% of the" in rows[0][1] and "64 kbit/s: patch + apply" in rows[1][2]
    assert rows[3][1].endswith("KB frozen")


# ---------------------------------------------------------------- the document, up front

PARSE = """
import json, sys
from iotjobs import ota
from iotjobs.agent import Rejected

class Ctx:
    config = json.loads(sys.argv[2])

for line in open(sys.argv[1]):
    try:
        job = ota.check(Ctx(), json.loads(line), 0x180000)
        print("OK", job["url"] is not None, job["delta"]["base_size"])
    except Rejected as e:
        print("REJECTED", e.args[0])
"""
URL = "https://s3.example.com/b/x?X-Amz-Signature=ab"
DELTA = {"url": URL, "size": 900, "sha256": "cd" * 32, "base_size": 4096, "base_sha256": "ef" * 32}
DOC = {"operation": "ota", "url": URL, "size": 1000, "sha256": "ab" * 32, "version": "1.1.0"}


@pytest.mark.parametrize(
    ("doc", "outcome"),
    [
        ({**DOC, "delta": DELTA}, "OK True 4096"),
        ({k: v for k, v in {**DOC, "delta": DELTA}.items() if k != "url"}, "OK False 4096"),
        ({**DOC, "delta": [DELTA]}, "REJECTED 'delta' must be an object"),
        ({**DOC, "delta": {**DELTA, "bsae_size": 1}}, "REJECTED unknown field 'delta.bsae_size'"),
        (
            {**DOC, "delta": {**DELTA, "base_sha256": "ef"}},
            "REJECTED 'delta.base_sha256' must be 64 hex digits",
        ),
        (
            {**DOC, "delta": {**DELTA, "base_size": 0}},
            "REJECTED 'delta.base_size' must be a positive integer within the slot",
        ),
        (
            {**DOC, "delta": {**DELTA, "url": "http://h/x"}},
            "REJECTED plain http:// download refused: this device allows only https://",
        ),
        ({**DOC, "sha256": None, "delta": DELTA}, "REJECTED 'sha256' must be 64 hex digits"),
        (
            {k: v for k, v in {**DOC, "delta": DELTA}.items() if k != "sha256"},
            "REJECTED no 'sha256' and no signing key: the image could not be verified",
        ),
        ({**DOC, "delta": {**DELTA, "sha256": None}}, "REJECTED 'sha256' must be 64 hex digits"),
        ({**DOC, "delta": {**DELTA, "url": None}}, "REJECTED 'url' must be a URL string"),
        ({**DOC, "delta": DELTA, "sha265": "x"}, "REJECTED unknown field 'sha265'"),
    ],
)
def test_delta_documents_are_checked_before_anything_is_downloaded(
    micropython: Any, tmp_path: Path, doc: dict[str, Any], outcome: str
) -> None:
    (tmp_path / "docs.jsonl").write_text(json.dumps(doc) + "\n")
    args = (str(tmp_path / "docs.jsonl"), "{}")
    r = micropython(code=PARSE, args=args, heapsize="256k", cwd=tmp_path).check()
    assert r.out.strip() == outcome


def test_a_patch_download_cut_half_way_is_applied_again_from_its_start(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    from harness.faultproxy import Fault, FaultProxy

    objects = stack_session.objects
    assert objects is not None
    dev = ota_board(stack_session, boards, signing)
    new = new_version("1.2.0", size=300_000)  # 1.0.0's first 64 KB, then new bytes
    patch = delta.create(BASE, new)
    key = f"ota/test-{patch.sha256[:16]}.patch"
    stack_session.upload(key, patch.data)
    doc, _ = otajob.prepare(stack_session, new, key=signing)
    del doc["url"]  # nothing to fall back to: the patch itself must get through
    with FaultProxy("127.0.0.1", objects.port) as proxy:
        proxy.plan(Fault.cut(len(patch.data) // 2))
        url = objects.presign(objects.bucket, key, 3600)  # pre-signed by the operator
        doc["delta"] = patch.document(url.replace(f":{objects.port}/", f":{proxy.port}/"))
        job = unique("delta")
        stack_session.iot_client().create_job(
            jobId=job, targets=[arn(stack_session, thing_of(dev))], document=json.dumps(doc)
        )
        ex = final(stack_session, thing_of(dev), job, timeout=120)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert running_version(dev) == "1.2.0"
    assert any("download:" in line and "retry 1" in line for line in dev.lines)
    # Continued from the last checkpoint before the cut, not from the patch's first byte.
    assert any("resuming the patch at" in line for line in dev.lines), "\n".join(dev.lines)
    assert image.slot_image(dev.board, "ota_1")[: len(new)] == new


def test_a_reset_while_the_patch_is_applied_continues_from_the_checkpoint(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    from plugin_stack import wait_until

    from harness.faultproxy import Fault, FaultProxy

    objects = stack_session.objects
    assert objects is not None
    dev = ota_board(stack_session, boards, signing)
    new = new_version("1.3.0", size=300_000)
    patch = delta.create(BASE, new)
    key = f"ota/test-{patch.sha256[:16]}.patch"
    stack_session.upload(key, patch.data)
    doc, _ = otajob.prepare(stack_session, new, key=signing)
    del doc["url"]
    with FaultProxy("127.0.0.1", objects.port) as proxy:
        # The patch stalls at 100 KB (checkpoints every 16 KB before it): the power goes then.
        proxy.plan(Fault.stall(100_000, seconds=60))
        url = objects.presign(objects.bucket, key, 3600)
        doc["delta"] = patch.document(url.replace(f":{objects.port}/", f":{proxy.port}/"))
        job = unique("delta")
        stack_session.iot_client().create_job(
            jobId=job, targets=[arn(stack_session, thing_of(dev))], document=json.dumps(doc)
        )
        state = dev.board / "jobstate.json"
        wait_until(lambda: state.exists() and '"ck"' in state.read_text(), 60, "a checkpoint")
        dev.kill()  # power off once a checkpoint is persisted
        dev.start()
        ex = final(stack_session, thing_of(dev), job, timeout=120)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert running_version(dev) == "1.3.0"
    assert any("resuming the patch at" in line for line in dev.lines), "\n".join(dev.lines)
    assert image.slot_image(dev.board, "ota_1")[: len(new)] == new


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (["--no-full"], "jobsctl: --no-full needs --from OLD (a delta job)\n"),
        (
            ["--from", "notes.txt"],
            "jobsctl: invalid app image: not an ESP32 app image (no 0xE9 header)\n",
        ),
    ],
)
def test_jobsctl_job_ota_refuses_a_delta_it_cannot_make_before_uploading(
    stack_session: Stack, tmp_path: Path, capsys: Any, extra: list[str], error: str
) -> None:
    from jobsctl import cli

    (tmp_path / "new.bin").write_bytes(new_version("1.1.0"))
    (tmp_path / "notes.txt").write_text("hello")
    argv = ["job", "ota", unique("x"), "--state-dir", str(stack_session.state_dir)]
    argv += ["--targets", "t", "--file", str(tmp_path / "new.bin")]
    argv += [a if a != "notes.txt" else str(tmp_path / a) for a in extra]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err == error
