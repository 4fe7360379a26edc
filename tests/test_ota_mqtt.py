"""OTA over AWS IoT MQTT-based file delivery, end to end: a stream made with boto3, an
``afr_ota`` job naming it, the device under the Unix port downloading the image through its
one MQTT session (JSON or CBOR), verifying, booting and reporting; preference and fallback
when a document offers both protocols; drops, resets and cancellation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from plugin_agent import arn, details, final
from plugin_stack import unique, wait_until
from test_ota_e2e import (
    Boards,
    assert_old_firmware_boots,
    ota_board,
    persisted_offset,
    running_version,
    thing_of,
)

from jobsctl import image, otajob
from jobsctl.stack import Stack

WINDOW = 16  # iotjobs.stream._WINDOW: blocks asked for per request


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return otajob.signing_key(tmp_path_factory.mktemp("signing"))


def stream_job(
    stack: Stack,
    thing: str,
    data: bytes,
    key: Path,
    *,
    http: bool = False,
    mqtt: bool = True,
    stream_key: str | None = None,
    gone: bool = False,
) -> tuple[str, str]:
    """Upload ``data``, make a stream of it, and an afr_ota job offering MQTT (and HTTP);
    ``gone``: the stream is deleted before the job is created (the device reacts to a new job
    within milliseconds: a deletion after it would race the device's first request)."""
    endpoints = stack.endpoints
    obj = otajob.object_key(data)
    url = stack.upload(obj, data)
    iot = stack.iot_client()
    sid = unique("strm")
    iot.create_stream(
        streamId=sid,
        files=otajob.stream_files(endpoints["bucket"], stream_key or obj),
        roleArn=otajob.stream_role(endpoints["account_id"]),
    )
    doc = otajob.afr_document(
        data,
        image.sign(data, key),
        url=otajob.placeholder(url) if http else None,
        stream=sid if mqtt else None,
    )
    job = "AFR_OTA-" + unique("j")
    extra: dict[str, Any] = {}
    if http:
        extra["presignedUrlConfig"] = otajob.presigned_config(endpoints["account_id"])
    if gone:
        iot.delete_stream(streamId=sid)
    iot.create_job(jobId=job, targets=[arn(stack, thing)], document=json.dumps(doc), **extra)
    return job, sid


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_ota_over_mqtt_streams_succeeds_on_the_new_version(
    stack_session: Stack, boards: Boards, signing: Path, fmt: str
) -> None:
    dev = ota_board(stack_session, boards, signing, ota_stream_format=fmt)
    data = image.build_app_image("4.0.0", size=300_123)
    job, _ = stream_job(stack_session, thing_of(dev), data, signing)
    ex = final(stack_session, thing_of(dev), job, timeout=120)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert details(ex)["firmware"] == "4.0.0" and running_version(dev) == "4.0.0"
    blocks = -(-len(data) // 4096)
    assert f"stream: {blocks} blocks in {-(-blocks // WINDOW)} requests" in "\n".join(dev.lines)
    assert not any("https" in line.lower() for line in dev.lines)


def test_both_protocols_use_the_configured_preference(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing, ota_protocol="http")
    data = image.build_app_image("4.0.1", size=100_000)
    job, _ = stream_job(stack_session, thing_of(dev), data, signing, http=True)
    ex = final(stack_session, thing_of(dev), job, timeout=120)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert not any("stream:" in line for line in dev.lines)


def test_a_broken_stream_falls_back_to_http(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    # The stream names another object: its blocks have the wrong size at the end, or the
    # stream is gone; either way the device falls back to the document's HTTP URL.
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("4.0.2", size=100_000)
    job, _ = stream_job(stack_session, thing_of(dev), data, signing, http=True, gone=True)
    ex = final(stack_session, thing_of(dev), job, timeout=120)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    log = "\n".join(dev.lines)
    assert "ResourceNotFound" in log and "falling back to HTTP" in log
    assert running_version(dev) == "4.0.2"


def test_a_missing_stream_without_http_fails_with_the_services_reason(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("4.0.3", size=50_000)
    job, _ = stream_job(stack_session, thing_of(dev), data, signing, gone=True)
    ex = final(stack_session, thing_of(dev), job, timeout=60)
    assert ex["status"] == "FAILED"
    assert details(ex)["reason"].startswith("stream rejected: ResourceNotFound")
    assert_old_firmware_boots(dev)


def test_reset_mid_stream_resumes_from_the_last_persisted_block(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("4.0.4", size=1_000_000)
    job, _ = stream_job(stack_session, thing_of(dev), data, signing)
    wait_until(lambda: persisted_offset(dev) >= 131072, timeout=60, what="a persisted offset")
    dev.kill()
    at = persisted_offset(dev)
    dev.start()
    ex = final(stack_session, thing_of(dev), job, timeout=120)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert f"resuming download at {at} of {len(data)}" in "\n".join(dev.lines) or at == 0
    assert running_version(dev) == "4.0.4"


def test_cancel_during_a_stream_download_stops_before_set_boot(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("4.0.5", size=1_400_000)
    job, _ = stream_job(stack_session, thing_of(dev), data, signing)
    wait_until(lambda: persisted_offset(dev) >= 65536, timeout=60, what="a persisted offset")
    stack_session.iot_client().cancel_job(jobId=job, force=True)
    dev.wait_for(f"{job}: canceled, handler stopped", timeout=60)
    assert final(stack_session, thing_of(dev), job)["status"] == "CANCELED"
    assert_old_firmware_boots(dev)


@pytest.mark.parametrize("protocol", ["mqtt", "both"])
def test_jobsctl_job_ota_protocol_makes_a_stream_the_device_downloads(
    stack_session: Stack, boards: Boards, signing: Path, tmp_path: Path, capsys: Any, protocol: str
) -> None:
    from jobsctl import cli

    dev = ota_board(stack_session, boards, signing)
    f = tmp_path / "app.bin"
    f.write_bytes(image.build_app_image("4.1.0", size=120_000))
    job = unique("cli")
    argv = ["job", "ota", job, "--state-dir", str(stack_session.state_dir)]
    argv += ["--targets", thing_of(dev), "--file", str(f), "--key", str(signing)]
    assert cli.main([*argv, "--protocol", protocol]) == 0
    doc = json.loads(capsys.readouterr().out)["document"]
    assert doc["stream"] == job and doc["file_id"] == 0
    assert ("url" in doc) == (protocol == "both")
    ex = final(stack_session, thing_of(dev), job, timeout=120)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert running_version(dev) == "4.1.0"
    assert any("stream:" in line for line in dev.lines)  # both: the default preference, MQTT
    assert cli.main([*argv, "--protocol", "mqtt", "--gzip-window", "12"]) == 1
    assert "--gzip-window works with --protocol http only" in capsys.readouterr().err
