"""OTA end to end: the device code under the Unix port takes an OTA job from the local service,
downloads the image over HTTPS (pre-signed URL, the stack's object store), verifies it, boots it
on the simulated flash, self-tests, and reports; or refuses, fails and rolls back.

Each test waits on what the board prints or what the service records, never on time.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from plugin_agent import FROZEN_OTA_HEAP, OTA_HEAP, arn, details, final
from plugin_stack import unique, wait_until

from harness.faultproxy import Fault, FaultProxy
from jobsctl import image, otajob
from jobsctl.device import DeviceProcess
from jobsctl.stack import Stack

Boards = Callable[..., DeviceProcess]


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return otajob.signing_key(tmp_path_factory.mktemp("signing"))


def ota_board(
    stack: Stack,
    boards: Boards,
    signing: Path | None,
    selftest: str | None = None,
    frozen: bool = False,
    **extra: Any,
) -> DeviceProcess:
    thing = unique("ota")
    if signing is not None:
        extra.setdefault("ota_key_file", "ota_key.pem")
    heap = FROZEN_OTA_HEAP if frozen else OTA_HEAP
    dev = boards(stack, thing, heapsize=heap, start=False, frozen=frozen, **extra)
    if signing is not None:
        shutil.copy(image.public_key_path(signing), dev.board / "ota_key.pem")
    if selftest is not None:
        (dev.board / "selftest.py").write_text(selftest)
    dev.start()
    dev.wait_for("no pending job")
    return dev


def ota_job(
    stack: Stack,
    thing: str,
    data: bytes,
    signing: Path | None,
    gzip_window: int | None = None,
    **override: Any,
) -> str:
    """An OTA job for ``data`` (uploaded, signed, gzip'ed with ``window_bits``); document
    fields in ``override`` replace the real ones (None drops a field)."""
    job_id = unique("ota")
    doc, extra = otajob.prepare(stack, data, key=signing, window_bits=gzip_window)
    doc.update(override)
    doc = {k: v for k, v in doc.items() if v is not None}
    stack.iot_client().create_job(
        jobId=job_id, targets=[arn(stack, thing)], document=json.dumps(doc), **extra
    )
    return job_id


def thing_of(dev: DeviceProcess) -> str:
    return dev.board.name


def running_version(dev: DeviceProcess) -> str:
    flash = json.loads((dev.board / "flash" / "otadata.json").read_text())
    return image.read_app_version(image.slot_image(dev.board, flash["running"]))


@pytest.mark.parametrize("frozen", [False, True], ids=["mpy", "frozen"])
def test_ota_succeeds_and_reports_the_new_version_after_the_reboot(
    stack_session: Stack, boards: Boards, signing: Path, frozen: bool
) -> None:
    # Both ways a board carries the agent: .mpy files (`make deploy`) or frozen into the firmware.
    dev = ota_board(stack_session, boards, signing, frozen=frozen)
    data = image.build_app_image("2.0.0", size=300_000)
    job = ota_job(stack_session, thing_of(dev), data, signing)
    ex = final(stack_session, thing_of(dev), job, timeout=120)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    d = details(ex)
    assert d["reason"] == "running 2.0.0" and d["firmware"] == "2.0.0" and d["previous"] == "1.0.0"
    assert int(d["verify_ms"]) >= 0
    assert dev.boots == 2 and running_version(dev) == "2.0.0"
    flash = json.loads((dev.board / "flash" / "otadata.json").read_text())
    assert flash["state"][flash["running"]] == "VALID"


def flash_state(dev: DeviceProcess) -> dict[str, Any]:
    return dict(json.loads((dev.board / "flash" / "otadata.json").read_text()))


def assert_old_firmware_boots(dev: DeviceProcess) -> None:
    st = flash_state(dev)
    assert st["boot"] == st["running"] == "ota_0" and running_version(dev) == "1.0.0"
    # Nothing bootable was left in the other slot: its first block was erased (or never set).
    assert st["state"].get("ota_1", "EMPTY") == "EMPTY"
    assert image.slot_image(dev.board, "ota_1")[:1] != b"\xe9"


@pytest.fixture()
def proxy(stack_session: Stack) -> Iterator[FaultProxy]:
    assert stack_session.objects is not None
    with FaultProxy("127.0.0.1", stack_session.objects.port) as p:
        yield p


def proxied_job(stack: Stack, thing: str, data: bytes, signing: Path, proxy: FaultProxy) -> str:
    """An OTA job whose document carries a URL pre-signed by the operator, through ``proxy``."""
    assert stack.objects is not None
    doc, _ = otajob.prepare(stack, data, key=signing)
    url = stack.objects.presign(stack.objects.bucket, otajob.object_key(data), 3600)
    doc["url"] = url.replace(f"localhost:{stack.objects.port}", f"localhost:{proxy.port}")
    job_id = unique("ota")
    stack.iot_client().create_job(
        jobId=job_id, targets=[arn(stack, thing)], document=json.dumps(doc)
    )
    return job_id


def test_hash_mismatch_fails_and_the_old_firmware_still_boots(
    stack_session: Stack, boards: Boards
) -> None:
    dev = ota_board(stack_session, boards, None)
    data = image.build_app_image("2.0.0", size=100_000)
    job = ota_job(stack_session, thing_of(dev), data, None, sha256="00" * 32)
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "FAILED"
    assert details(ex)["reason"].startswith("SHA-256 mismatch")
    assert_old_firmware_boots(dev)
    dev.kill()
    dev.start()
    dev.wait_for("no pending job", since=dev.mark())
    assert running_version(dev) == "1.0.0"


def test_bad_signature_fails_and_nothing_reaches_the_boot_slot(
    stack_session: Stack, boards: Boards, signing: Path, tmp_path: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("2.0.0", size=100_000)
    forged = otajob.signing_key(tmp_path)  # a key the device does not trust
    job = ota_job(stack_session, thing_of(dev), data, signing, signature=image.sign(data, forged))
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "FAILED" and details(ex)["reason"] == "bad signature"
    assert_old_firmware_boots(dev)


def test_unsigned_image_is_rejected_by_a_device_with_a_key(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("2.0.0", size=50_000)
    job = ota_job(stack_session, thing_of(dev), data, None)
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "REJECTED" and "unsigned image refused" in details(ex)["reason"]
    assert_old_firmware_boots(dev)


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"sha256": None}, "no 'sha256' and no signing key"),
        ({"sha256": "xyz"}, "'sha256' must be 64 hex digits"),
        ({"size": "big"}, "'size' must be a positive integer"),
        ({"url": 42}, "'url' must be a URL string"),
        ({"version": 2}, "'version' must be a string"),
    ],
)
def test_malformed_ota_documents_are_rejected_before_any_write(
    stack_session: Stack, boards: Boards, override: dict[str, Any], reason: str
) -> None:
    dev = ota_board(stack_session, boards, None)
    data = image.build_app_image("2.0.0", size=50_000)
    job = ota_job(stack_session, thing_of(dev), data, None, **override)
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "REJECTED" and reason in details(ex)["reason"]
    assert_old_firmware_boots(dev)


def test_image_larger_than_the_slot_is_rejected(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("2.0.0", size=image.SLOT_SIZE + 4096)
    job = ota_job(stack_session, thing_of(dev), data, signing)
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "REJECTED" and "does not fit" in details(ex)["reason"]
    assert_old_firmware_boots(dev)


SELFTEST_FAILS = """\
def run(ctx):
    return "sensor not found"
"""


def test_failed_self_test_rolls_back_and_reports_failed_from_the_old_firmware(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing, selftest=SELFTEST_FAILS)
    data = image.build_app_image("2.0.0", size=100_000)
    job = ota_job(stack_session, thing_of(dev), data, signing)
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "FAILED"
    assert details(ex)["reason"] == "self-test failed: sensor not found; rolled back to 1.0.0"
    assert dev.boots == 3  # old -> new (self-test fails) -> old
    st = flash_state(dev)
    assert st["running"] == "ota_0" and running_version(dev) == "1.0.0"


def test_dropped_connection_resumes_the_download_where_it_stopped(
    stack_session: Stack, boards: Boards, signing: Path, proxy: FaultProxy
) -> None:
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("2.0.0", size=600_000)
    proxy.plan(Fault.cut(300_000))
    job = proxied_job(stack_session, thing_of(dev), data, signing, proxy)
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert proxy.stats.cuts == 1 and proxy.stats.connections == 2
    resumed = dev.wait_for("resuming download at")
    at = int(resumed.split("resuming download at ")[1].split()[0])
    assert 0 < at <= 300_000
    # The second connection carried only the rest (plus TLS and HTTP overhead).
    assert proxy.stats.per_connection_down[1] < len(data) - at + 20_000
    assert running_version(dev) == "2.0.0"


def persisted_offset(dev: DeviceProcess) -> int:
    try:
        st = json.loads((dev.board / "jobstate.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(st.get("data", {}).get("off", 0))


def test_reset_mid_download_resumes_from_the_last_persisted_block(
    stack_session: Stack, boards: Boards, signing: Path, proxy: FaultProxy
) -> None:
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("2.0.0", size=600_000)
    proxy.plan(Fault.stall(300_000, seconds=30))
    job = proxied_job(stack_session, thing_of(dev), data, signing, proxy)
    wait_until(lambda: persisted_offset(dev) >= 131072, timeout=30, what="a persisted offset")
    at = persisted_offset(dev)
    dev.kill()  # power cut while the download is stalled
    dev.start()
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert f"resuming download at {at} of {len(data)}" in "\n".join(dev.lines)
    assert proxy.stats.per_connection_down[-1] < len(data) - at + 20_000
    assert running_version(dev) == "2.0.0"


def test_cancel_during_download_stops_before_set_boot(
    stack_session: Stack, boards: Boards, signing: Path, proxy: FaultProxy
) -> None:
    dev = ota_board(stack_session, boards, signing, timeout_ms=1500)
    data = image.build_app_image("2.0.0", size=600_000)
    proxy.plan(Fault.stall(300_000, seconds=30))
    job = proxied_job(stack_session, thing_of(dev), data, signing, proxy)
    wait_until(lambda: persisted_offset(dev) >= 131072, timeout=30, what="a persisted offset")
    stack_session.iot_client().cancel_job(jobId=job, force=True)
    dev.wait_for(f"{job}: canceled, handler stopped")
    assert final(stack_session, thing_of(dev), job)["status"] == "CANCELED"
    assert_old_firmware_boots(dev)


def test_refused_url_leads_to_a_fresh_describe_and_the_download_goes_on(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    # The object is not there yet when the device first asks (404, like an expired or revoked
    # URL's 403): the device describes the job again for a newly signed URL and retries.
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("2.0.1", size=100_000)
    url = otajob.s3_url(stack_session.endpoints["bucket"], otajob.object_key(data))
    doc = otajob.document(data, otajob.placeholder(url), image.sign(data, signing))
    job = unique("ota")
    stack_session.iot_client().create_job(
        jobId=job,
        targets=[arn(stack_session, thing_of(dev))],
        document=json.dumps(doc),
        presignedUrlConfig=otajob.presigned_config(stack_session.endpoints["account_id"]),
    )
    dev.wait_for(f"{job}: download refused (404), asking for a new URL")
    stack_session.upload(otajob.object_key(data), data)
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert running_version(dev) == "2.0.1"


def test_object_that_never_appears_fails_after_bounded_refreshes(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("2.0.2", size=50_000)
    url = otajob.s3_url(stack_session.endpoints["bucket"], "ota/never-uploaded.bin")
    doc = otajob.document(data, otajob.placeholder(url), image.sign(data, signing))
    job = unique("ota")
    stack_session.iot_client().create_job(
        jobId=job,
        targets=[arn(stack_session, thing_of(dev))],
        document=json.dumps(doc),
        presignedUrlConfig=otajob.presigned_config(stack_session.endpoints["account_id"]),
    )
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "FAILED" and details(ex)["reason"] == "download refused: HTTP 404"
    assert sum("asking for a new URL" in line for line in dev.lines) == 3
    assert_old_firmware_boots(dev)


def test_afr_ota_document_from_create_ota_update_is_understood(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    # The shape `aws iot create-ota-update` (HTTP protocol, custom code signing) puts in the job.
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("3.0.0", size=200_000)
    url = stack_session.upload(otajob.object_key(data), data)
    doc = {
        "afr_ota": {
            "protocols": ["HTTP"],
            "streamname": "",
            "files": [
                {
                    "filepath": "/",
                    "filesize": len(data),
                    "fileid": 0,
                    "certfile": "ota_key.pem",
                    "fileType": 0,
                    "update_data_url": otajob.placeholder(url),
                    "auth_scheme": "aws.s3.presigned",
                    "sig-sha256-ecdsa": image.sign(data, signing),
                }
            ],
        }
    }
    job = unique("afr")
    stack_session.iot_client().create_job(
        jobId=job,
        targets=[arn(stack_session, thing_of(dev))],
        document=json.dumps(doc),
        presignedUrlConfig=otajob.presigned_config(stack_session.endpoints["account_id"]),
    )
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert details(ex)["firmware"] == "3.0.0" and running_version(dev) == "3.0.0"


@pytest.mark.parametrize(
    ("afr", "reason"),
    [
        ({"protocols": ["MQTT"]}, "'stream' must be a stream name"),
        ({"protocols": ["MQTT"], "streamname": "a/b"}, "'stream' must be a stream name"),
        ({"protocols": ["COAP"]}, "afr_ota: protocols must be MQTT and/or HTTP"),
        ({"protocols": []}, "afr_ota: protocols must be MQTT and/or HTTP"),
    ],
)
def test_afr_ota_documents_that_name_no_usable_protocol_are_rejected(
    stack_session: Stack, boards: Boards, signing: Path, afr: dict[str, Any], reason: str
) -> None:
    dev = ota_board(stack_session, boards, signing)
    doc = {"afr_ota": {**afr, "files": [{"filesize": 10, "fileid": 0}]}}
    job = unique("afr")
    stack_session.iot_client().create_job(
        jobId=job, targets=[arn(stack_session, thing_of(dev))], document=json.dumps(doc)
    )
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "REJECTED"
    assert details(ex)["reason"].startswith(reason)


def test_jobsctl_job_ota_signs_uploads_and_creates_a_job_the_device_runs(
    stack_session: Stack, boards: Boards, signing: Path, tmp_path: Path, capsys: Any
) -> None:
    from jobsctl import cli

    dev = ota_board(stack_session, boards, signing)
    f = tmp_path / "app.bin"
    f.write_bytes(image.build_app_image("4.0.0", size=150_000))
    job = unique("cli")
    argv = [
        "job",
        "ota",
        job,
        "--state-dir",
        str(stack_session.state_dir),
        "--targets",
        thing_of(dev),
        "--file",
        str(f),
        "--gzip-window",
        "12",
        "--key",
        str(signing),
    ]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["document"]["url"].startswith(
        "${aws:iot:s3-presigned-url-v2:https://s3.us-east-1.amazonaws.com/"
    )
    assert out["document"]["compression"] == "gzip" and out["document"]["window_bits"] == 12
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "SUCCEEDED" and running_version(dev) == "4.0.0"


def test_jobsctl_job_ota_refuses_a_file_that_is_not_an_app_image(
    stack_session: Stack, tmp_path: Path, capsys: Any
) -> None:
    from jobsctl import cli

    f = tmp_path / "notes.txt"
    f.write_text("hello")
    argv = [
        "job",
        "ota",
        "x",
        "--state-dir",
        str(stack_session.state_dir),
        "--targets",
        "t",
        "--file",
        str(f),
    ]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err == "jobsctl: invalid app image: not an ESP32 app image (no 0xE9 header)\n"


@pytest.mark.parametrize("window_bits", [9, 13])
def test_gzip_image_is_decompressed_while_streaming_into_flash(
    stack_session: Stack, boards: Boards, signing: Path, window_bits: int
) -> None:
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("5.0.0", size=300_000)
    job = ota_job(stack_session, thing_of(dev), data, signing, window_bits)
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert running_version(dev) == "5.0.0"
    slot = image.slot_image(dev.board, flash_state(dev)["running"])
    assert slot[: len(data)] == data


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"window_bits": 15}, "gzip needs 'window_bits' 9-13"),
        ({"window_bits": None}, "gzip needs 'window_bits' 9-13"),
        ({"compression": "zstd"}, "'compression' must be \"gzip\""),
        ({"size": 200_000}, "the gzip payload is longer than 'size'"),
        ({"size": 400_000}, "the gzip payload is shorter than 'size'"),
    ],
)
def test_gzip_documents_that_do_not_add_up_end_without_touching_the_boot_slot(
    stack_session: Stack, boards: Boards, override: dict[str, Any], reason: str
) -> None:
    dev = ota_board(stack_session, boards, None)
    data = image.build_app_image("5.0.1", size=300_000)
    job = ota_job(stack_session, thing_of(dev), data, None, 12, **override)
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] in ("REJECTED", "FAILED") and reason in details(ex)["reason"]
    assert_old_firmware_boots(dev)
