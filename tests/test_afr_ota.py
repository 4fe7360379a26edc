"""afr_ota in full: the code-signing fields AWS sends (sig-sha256-ecdsa with a certfile naming
the device's key or certificate), and the statusDetails keys AWS's OTA agent reports across the
reboot (self_test, updatedBy), seen on the wire as the service receives them."""

from __future__ import annotations

import base64
import datetime
import json
import re
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from plugin_agent import OTA_HEAP, arn, details, final
from plugin_stack import unique
from test_ota_e2e import Boards, ota_board, running_version, thing_of

from jobsctl import image, otajob
from jobsctl.stack import Stack


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return otajob.signing_key(tmp_path_factory.mktemp("signing"))


def afr_job(stack: Stack, thing: str, data: bytes, key: Path, certfile: str) -> str:
    url = stack.upload(otajob.object_key(data), data)
    doc = otajob.afr_document(
        data, image.sign(data, key), url=otajob.placeholder(url), certfile=certfile
    )
    job = "AFR_OTA-" + unique("c")
    stack.iot_client().create_job(
        jobId=job,
        targets=[arn(stack, thing)],
        document=json.dumps(doc),
        presignedUrlConfig=otajob.presigned_config(stack.endpoints["account_id"]),
    )
    return job


def test_a_certfile_other_than_the_devices_key_is_refused(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("6.0.0", size=40_000)
    job = afr_job(stack_session, thing_of(dev), data, signing, "/certs/attacker.pem")
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "REJECTED"
    assert details(ex)["reason"] == (
        "certfile '/certs/attacker.pem' is not this device's signing key (ota_key.pem)"
    )
    assert running_version(dev) == "1.0.0"


def signer_certificate(key_path: Path) -> bytes:
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ota signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_certfile_naming_a_signer_certificate_verifies_with_its_key_and_reports_like_aws(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    thing = unique("afrc")
    dev = boards(
        stack_session, thing, heapsize=OTA_HEAP, start=False, ota_key_file="certs/signer.crt"
    )
    (dev.board / "certs").mkdir()
    (dev.board / "certs" / "signer.crt").write_bytes(signer_certificate(signing))
    # What the service receives from the device: its update requests, as the service's data
    # plane reads them (a second client with the service's identity would take its session:
    # the broker makes the certificate's CN the client id).
    seen: list[dict[str, Any]] = []
    cond = threading.Condition()
    assert stack_session.service is not None
    client = stack_session.service.data.client
    on_message = client.on_message
    updates = re.compile(rf"\$aws/things/{re.escape(thing)}/jobs/[^/]+/update")

    def spy(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        if updates.fullmatch(msg.topic):
            with cond:
                seen.append(json.loads(msg.payload).get("statusDetails") or {})
                cond.notify_all()
        on_message(c, u, msg)  # type: ignore[misc]

    client.on_message = spy
    try:
        dev.start()
        dev.wait_for("no pending job")
        data = image.build_app_image("6.1.0", size=60_000)
        job = afr_job(stack_session, thing, data, signing, "/certs/signer.crt")
        ex = final(stack_session, thing, job, timeout=120)
        assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
        assert details(ex)["updatedBy"] == "1.0.0" and running_version(dev) == "6.1.0"
        with cond:
            assert cond.wait_for(lambda: any(d.get("firmware") for d in seen), 10)
        ready = [d for d in seen if d.get("self_test") == "ready"]
        active = [d for d in seen if d.get("self_test") == "active"]
        assert ready and ready[0]["updatedBy"] == "1.0.0" and ready[0]["step"] == "rebooting"
        assert active and active[0]["updatedBy"] == "1.0.0"
        assert seen.index(ready[0]) < seen.index(active[0])
    finally:
        client.on_message = on_message


def test_an_update_with_firmware_and_app_bundle_installs_both(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    # CreateOTAUpdate with two files (fileType 0: firmware, 1: app bundle) over HTTP: the
    # board installs the firmware (reset, self-test), then the app files (reset, self-test).
    dev = boards(
        stack_session, unique("afr2"), heapsize=OTA_HEAP, start=False, ota_key_file="k.pem"
    )
    (dev.board / "k.pem").write_bytes(image.public_key_path(signing).read_bytes())
    dev.start()
    dev.wait_for("no pending job")
    fw = image.build_app_image("7.0.0", size=120_000)
    tar = otajob.build_bundle({"sensor.py": b"VERSION = 7\n"})
    bucket = stack_session.endpoints["bucket"]
    files = []
    for kind, data, key in ((0, fw, "multi/fw.bin"), (1, tar, "multi/app.tar")):
        stack_session.upload(key, data)
        sig = image.sign(data, signing)
        files.append(
            {
                "fileName": key,
                "fileType": kind,
                "fileLocation": {"s3Location": {"bucket": bucket, "key": key}},
                "codeSigning": {
                    "customCodeSigning": {
                        "signature": {"inlineDocument": base64.b64decode(sig)},
                        "certificateChain": {"certificateName": "k.pem"},
                        "hashAlgorithm": "SHA256",
                        "signatureAlgorithm": "ECDSA",
                    }
                },
            }
        )
    ota_id = unique("two")
    out = stack_session.iot_client().create_ota_update(
        otaUpdateId=ota_id,
        targets=[arn(stack_session, dev.board.name)],
        protocols=["HTTP"],
        files=files,
        roleArn="arn:aws:iam::123456789012:role/ota",
    )
    ex = final(stack_session, dev.board.name, out["awsIotJobId"], timeout=180)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    d = details(ex)
    assert d["firmware"] == "7.0.0" and d["files_done"] == "2"
    assert running_version(dev) == "7.0.0"
    assert (dev.board / "app" / "sensor.py").read_bytes() == b"VERSION = 7\n"
    assert dev.boots == 3  # power-on, the firmware's reset, the bundle's reset


def test_several_files_that_are_not_one_firmware_and_one_bundle_are_rejected(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("7.1.0", size=20_000)
    one = otajob.afr_document(data, image.sign(data, signing), url="https://x.example/a.bin")
    entry = one["afr_ota"]["files"][0]
    doc = {"afr_ota": {**one["afr_ota"], "files": [entry, dict(entry, fileid=1)]}}
    job = unique("afr2")
    stack_session.iot_client().create_job(
        jobId=job, targets=[arn(stack_session, thing_of(dev))], document=json.dumps(doc)
    )
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "REJECTED"
    assert details(ex)["reason"].startswith("afr_ota: several files must be one firmware")
