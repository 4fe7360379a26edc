"""What cannot work is refused up front: a signature that is not base64, plain http on a device
that does not allow it, a misspelt field of our own document formats. Each ends REJECTED with
its reason before any network use; fields of AWS's afr_ota documents that we do not use are
ignored, as AWS's agent does."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from plugin_agent import arn, details, final
from plugin_stack import unique
from test_ota_e2e import Boards, ota_board, ota_job, running_version, signing, thing_of

from jobsctl import image, otajob
from jobsctl.stack import Stack

__all__ = ["signing"]  # the module-scoped key fixture, shared with test_ota_e2e

PARSE = """
import json, sys
from iotjobs import ota
from iotjobs.agent import Rejected

class Ctx:
    config = json.loads(sys.argv[2])

for line in open(sys.argv[1]):
    case = json.loads(line)
    try:
        ota.check(Ctx(), case["doc"], 0x180000, case.get("what", "OTA slot"))
        print("OK")
    except Rejected as e:
        print("REJECTED", e.args[0])
"""

SIG = base64.b64encode(b"\x30\x44" + bytes(range(68))).decode()  # DER-shaped
URL = "https://s3.example.com/b/app.bin?X-Amz-Signature=ab"
DOC = {"operation": "ota", "url": URL, "size": 1000, "sha256": "ab" * 32, "version": "1.1.0"}


@pytest.mark.parametrize(
    ("doc", "config", "outcome"),
    [
        (DOC, {}, "OK"),
        ({**DOC, "signature": SIG}, {"ota_key_file": "k.pem"}, "OK"),
        (
            {**DOC, "signature": "not base64!"},
            {"ota_key_file": "k.pem"},
            "REJECTED 'signature' must be a base64 DER ECDSA signature",
        ),
        (
            {**DOC, "signature": "QUJD" * 10},  # base64, but not a DER signature
            {"ota_key_file": "k.pem"},
            "REJECTED 'signature' must be a base64 DER ECDSA signature",
        ),
        (
            {**DOC, "signature": SIG[:-1]},  # cut short: bad padding
            {"ota_key_file": "k.pem"},
            "REJECTED 'signature' must be a base64 DER ECDSA signature",
        ),
        (
            {**DOC, "url": "http://files.local/app.bin"},
            {},
            "REJECTED plain http:// download refused: this device allows only https://",
        ),
        ({**DOC, "url": "http://files.local/app.bin"}, {"ota_allow_http": True}, "OK"),
        ({**DOC, "url": "ftp://files.local/app.bin"}, {}, "REJECTED 'url' must be an https:// URL"),
        (
            {k: v for k, v in {**DOC, "sha265": DOC["sha256"]}.items() if k != "sha256"},
            {},
            "REJECTED unknown field 'sha265'",
        ),
        (
            {
                "afr_ota": {
                    "protocols": ["HTTP"],
                    "streamname": "s",
                    "files": [
                        {
                            "filepath": "/",
                            "filesize": 1000,
                            "fileid": 0,
                            "certfile": "c",
                            "fileType": 0,
                            "update_data_url": URL,
                            "auth_scheme": "aws.s3.presigned",
                            "attr": "x",
                            "sig-sha256-ecdsa": SIG,
                        }
                    ],
                }
            },
            {"ota_key_file": "k.pem"},
            "OK",
        ),
    ],
    ids=[
        "ok",
        "signed",
        "sig-not-base64",
        "sig-not-der",
        "sig-bad-padding",
        "http-not-allowed",
        "http-allowed",
        "ftp",
        "misspelt-sha256",
        "afr-extra-fields-ignored",
    ],
)
def test_ota_documents_are_checked_before_anything_is_downloaded(
    micropython: Any, tmp_path: Path, doc: dict[str, Any], config: dict[str, Any], outcome: str
) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"doc": doc}) + "\n")
    r = micropython(PARSE, args=(str(cases), json.dumps(config))).check()
    assert r.out.strip() == outcome


def test_bundle_documents_name_fields_that_only_ota_documents_have(
    micropython: Any, tmp_path: Path
) -> None:
    cases = tmp_path / "cases.jsonl"
    lines = [
        {"doc": {**DOC, "compression": "gzip", "window_bits": 12}, "what": "OTA slot"},
        {"doc": {**DOC, "compression": "gzip", "window_bits": 12}, "what": "bundle limit"},
        {"doc": {**DOC, "operation": "bundle"}, "what": "bundle limit"},
    ]
    cases.write_text("".join(json.dumps(line) + "\n" for line in lines))
    r = micropython(PARSE, args=(str(cases), "{}")).check()
    assert r.out.split("\n")[:3] == ["OK", "REJECTED unknown field 'compression'", "OK"]


# --- on a board, through the real service -------------------------------------------------------


PER_CALL = """
import sys
from iotjobs import delta, ota

# The nested parse of a delta document must find the checks the outer call loaded (not unload
# them under it, which made the next nested call load a second copy).
kept = []
nested = delta.parse


def spy(*args):
    m = sys.modules.get("iotjobs.otadoc")
    r = nested(*args)
    kept.append(m is not None and sys.modules.get("iotjobs.otadoc") is m)
    return r


delta.parse = spy
plain = %r
for doc in (plain, dict(plain, delta=%r)):
    ota.parse(doc, 0x180000, False)
    print("iotjobs.otadoc" in sys.modules, kept)
# A handler loads them in a stretch of its own first (ota.checks()); the call still unloads them.
import asyncio

asyncio.run(ota.checks())
print("checks", "iotjobs.otadoc" in sys.modules)
ota.parse(plain, 0x180000, False)
print("parse", "iotjobs.otadoc" in sys.modules)
# ota.aparse(), as the handlers call it: both in one call.
job = asyncio.run(ota.aparse(plain, 0x180000, False))
print("aparse", job["size"], "iotjobs.otadoc" in sys.modules)
"""


def test_document_checks_are_loaded_for_each_call_only(micropython: Any) -> None:
    # iotjobs.otadoc (the update documents' checks) is loaded by ota.parse()/check() and
    # unloaded after, so that a download runs without it; a delta document's nested checks
    # use the copy the outer call loaded; loaded ahead by ota.checks() (in a stretch of its own:
    # ota.aparse()/acheck(), the handlers' calls), the call unloads them.
    base = "ef" * 32
    d = {"url": URL, "size": 900, "sha256": "cd" * 32, "base_size": 4096, "base_sha256": base}
    r = micropython(PER_CALL % (DOC, d)).check()
    assert r.out.split("\n")[:4] == ["False []", "False [True]", "checks True", "parse False"], (
        r.out
    )
    assert r.out.split("\n")[4] == f"aparse {DOC['size']} False", r.out


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"signature": "not base64!"}, "'signature' must be a base64 DER ECDSA signature"),
        ({"sha256": None, "sha265": "ab" * 32}, "unknown field 'sha265'"),
        ({"url": "http://localhost:9/app.bin"}, "plain http:// download refused"),
    ],
    ids=["signature", "misspelt", "http"],
)
def test_a_document_that_cannot_work_ends_rejected_before_any_download(
    stack_session: Stack, boards: Boards, signing: Path, override: dict[str, Any], reason: str
) -> None:
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("2.0.0", size=50_000)
    job = ota_job(stack_session, thing_of(dev), data, signing, **override)
    ex = final(stack_session, thing_of(dev), job)
    assert ex["status"] == "REJECTED" and reason in details(ex)["reason"], details(ex)
    assert not any(f"{job}: step download" in line for line in dev.lines)
    assert running_version(dev) == "1.0.0"


def test_afr_ota_fields_we_do_not_use_are_ignored(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    dev = ota_board(stack_session, boards, signing)
    data = image.build_app_image("3.1.0", size=60_000)
    url = stack_session.upload(otajob.object_key(data), data)
    doc = {
        "afr_ota": {
            "protocols": ["HTTP"],
            "streamname": "AFR_OTA-stream",
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
                    "attr": "3",
                    "fileVersion": "3.1.0",
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
    assert running_version(dev) == "3.1.0"
