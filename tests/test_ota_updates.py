"""CreateOTAUpdate & co through boto3, as AWS IoT's API: customer-signed files, the stream and
the AFR_OTA job they make, and a simulated board completing the update over MQTT streams."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from plugin_agent import arn, details, final
from plugin_stack import unique
from test_ota_e2e import Boards, ota_board, running_version, thing_of

from jobsctl import image, otajob
from jobsctl.stack import Stack

ROLE = "arn:aws:iam::123456789012:role/ota"


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return otajob.signing_key(tmp_path_factory.mktemp("signing"))


def ota_file(
    stack: Stack, data: bytes, key: Path, *, cert: str = "ota_key.pem", **signing: Any
) -> dict[str, Any]:
    obj = otajob.object_key(data)
    stack.upload(obj, data)
    custom = {
        "signature": {"inlineDocument": base64.b64decode(image.sign(data, key))},
        "certificateChain": {"certificateName": cert},
        "hashAlgorithm": "SHA256",
        "signatureAlgorithm": "ECDSA",
        **signing,
    }
    return {
        "fileName": "firmware.bin",
        "fileType": 0,
        "fileLocation": {"s3Location": {"bucket": stack.endpoints["bucket"], "key": obj}},
        "codeSigning": {"customCodeSigning": custom},
    }


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_boto3_ota_update_completes_over_mqtt_streams(
    stack_session: Stack, boards: Boards, signing: Path, fmt: str
) -> None:
    dev = ota_board(stack_session, boards, signing, ota_stream_format=fmt)
    data = image.build_app_image("5.0.0", size=250_000)
    iot = stack_session.iot_client()
    ota_id = unique("upd")
    out = iot.create_ota_update(
        otaUpdateId=ota_id,
        targets=[arn(stack_session, thing_of(dev))],
        protocols=["MQTT"],
        files=[ota_file(stack_session, data, signing)],
        roleArn=ROLE,
    )
    assert out["otaUpdateStatus"] == "CREATE_PENDING"
    assert out["awsIotJobId"] == f"AFR_OTA-{ota_id}"
    info = iot.get_ota_update(otaUpdateId=ota_id)["otaUpdateInfo"]
    assert info["otaUpdateStatus"] == "CREATE_COMPLETE" and info["protocols"] == ["MQTT"]
    doc = json.loads(iot.get_job_document(jobId=out["awsIotJobId"])["document"])["afr_ota"]
    assert doc["protocols"] == ["MQTT"] and doc["streamname"].startswith("AFR_OTA-")
    (f,) = doc["files"]
    assert f["filesize"] == len(data) and f["fileid"] == 0 and f["certfile"] == "ota_key.pem"
    assert "update_data_url" not in f
    stream = iot.describe_stream(streamId=doc["streamname"])["streamInfo"]
    assert stream["files"][0]["s3Location"]["key"] == otajob.object_key(data)
    ex = final(stack_session, thing_of(dev), out["awsIotJobId"], timeout=120)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert details(ex)["firmware"] == "5.0.0" and running_version(dev) == "5.0.0"
    assert any("stream:" in line for line in dev.lines)
    assert ota_id in [u["otaUpdateId"] for u in iot.list_ota_updates()["otaUpdates"]]
    iot.delete_ota_update(otaUpdateId=ota_id, deleteStream=True, forceDeleteAWSJob=True)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.get_ota_update(otaUpdateId=ota_id)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_stream(streamId=doc["streamname"])


def test_both_protocols_make_a_document_with_url_and_stream(
    stack_session: Stack, signing: Path
) -> None:
    stack_session.create_thing(thing := unique("updt"))
    data = image.build_app_image("5.0.1", size=20_000)
    iot = stack_session.iot_client()
    ota_id = unique("upd")
    iot.create_ota_update(
        otaUpdateId=ota_id,
        targets=[arn(stack_session, thing)],
        protocols=["HTTP", "MQTT"],
        files=[ota_file(stack_session, data, signing)],
        roleArn=ROLE,
        awsJobPresignedUrlConfig={"expiresInSec": 900},
        awsJobExecutionsRolloutConfig={"maximumPerMinute": 10},
    )
    job_id = f"AFR_OTA-{ota_id}"
    doc = json.loads(iot.get_job_document(jobId=job_id)["document"])["afr_ota"]
    assert doc["protocols"] == ["HTTP", "MQTT"] and doc["streamname"]
    url = doc["files"][0]["update_data_url"]
    assert url.startswith("${aws:iot:s3-presigned-url:https://s3.amazonaws.com/")
    public = image.public_key_path(signing).read_bytes()
    assert image.verify(data, doc["files"][0]["sig-sha256-ecdsa"], public)
    job = iot.describe_job(jobId=job_id)["job"]
    assert job["presignedUrlConfig"] == {"roleArn": ROLE, "expiresInSec": 900}
    assert job["jobExecutionsRolloutConfig"]["maximumPerMinute"] == 10


def test_create_ota_update_refuses_what_it_cannot_do(stack_session: Stack, signing: Path) -> None:
    stack_session.create_thing(thing := unique("updt"))
    data = image.build_app_image("5.0.2", size=20_000)
    iot = stack_session.iot_client()
    target = [arn(stack_session, thing)]
    good = ota_file(stack_session, data, signing)
    signer = dict(good, codeSigning={"awsSignerJobId": "abc"})
    rsa = ota_file(stack_session, data, signing, signatureAlgorithm="RSA")
    missing = dict(good, fileLocation={"s3Location": {"bucket": "jobs-payloads", "key": "no"}})
    for files, match in (
        ([signer], "AWS Signer is not available locally"),
        ([rsa], "only SHA256 with ECDSA"),
        ([missing], "no such object"),
    ):
        with pytest.raises(iot.exceptions.InvalidRequestException, match=match):
            iot.create_ota_update(
                otaUpdateId=unique("bad"), targets=target, files=files, roleArn=ROLE
            )
    ota_id = unique("upd")
    iot.create_ota_update(otaUpdateId=ota_id, targets=target, files=[good], roleArn=ROLE)
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_ota_update(otaUpdateId=ota_id, targets=target, files=[good], roleArn=ROLE)
