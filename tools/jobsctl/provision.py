"""Provisioning a thing on real AWS IoT Core, and the device bundle it needs.

    iot = boto3.Session(profile_name=..., region_name=...).client("iot")
    info = provision_aws("dev-1", Path("bundle"), iot, group="fleet")

``provision_aws`` creates the thing (and adds it to a group), a key pair and an active
certificate, a least-privilege policy (:func:`policy_document`), attaches both, looks up the
account's ``iot:Data-ATS`` endpoint and writes the bundle that ``jobsctl deploy`` copies to a
board: ``config.json``, ``device.pem``, ``device.key``, ``AmazonRootCA1.pem`` and, with an OTA
signing key, ``ota_key.pem`` (the public key every OTA image must be signed for). Wi-Fi
settings given to it go into ``config.json``: the bundle is complete, nothing to edit by hand.

AWS hands out a certificate's private key exactly once, so the key is written to disk right
after it is created, before any later call that could fail; the output folder is checked
before the first call so that a bad ``--out`` costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .errors import JobsctlError

CONFIG_FILE = "config.json"
CERT_FILE = "device.pem"
KEY_FILE = "device.key"
CA_FILE = "AmazonRootCA1.pem"
OTA_KEY_FILE = "ota_key.pem"
MQTT_PORT = 8883
BUNDLE_FILES = (CONFIG_FILE, CERT_FILE, KEY_FILE, CA_FILE, OTA_KEY_FILE)

# Amazon Root CA 1: the public root that signs every AWS IoT Core ATS endpoint
# (https://www.amazontrust.com/repository/AmazonRootCA1.pem). Valid until 2038-01-17.
AMAZON_ROOT_CA1_SHA256 = "8ecde6884f3d87b1125ba31ac3fcb13d7016de7f57cc904fe1cb97c6ae98196e"
AMAZON_ROOT_CA1_PEM = """\
-----BEGIN CERTIFICATE-----
MIIDQTCCAimgAwIBAgITBmyfz5m/jAo54vB4ikPmljZbyjANBgkqhkiG9w0BAQsF
ADA5MQswCQYDVQQGEwJVUzEPMA0GA1UEChMGQW1hem9uMRkwFwYDVQQDExBBbWF6
b24gUm9vdCBDQSAxMB4XDTE1MDUyNjAwMDAwMFoXDTM4MDExNzAwMDAwMFowOTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoTBkFtYXpvbjEZMBcGA1UEAxMQQW1hem9uIFJv
b3QgQ0EgMTCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBALJ4gHHKeNXj
ca9HgFB0fW7Y14h29Jlo91ghYPl0hAEvrAIthtOgQ3pOsqTQNroBvo3bSMgHFzZM
9O6II8c+6zf1tRn4SWiw3te5djgdYZ6k/oI2peVKVuRF4fn9tBb6dNqcmzU5L/qw
IFAGbHrQgLKm+a/sRxmPUDgH3KKHOVj4utWp+UhnMJbulHheb4mjUcAwhmahRWa6
VOujw5H5SNz/0egwLX0tdHA114gk957EWW67c4cX8jJGKLhD+rcdqsq08p8kDi1L
93FcXmn/6pUCyziKrlA4b9v7LWIbxcceVOF34GfID5yHI9Y/QCB/IIDEgEw+OyQm
jgSubJrIqg0CAwEAAaNCMEAwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMC
AYYwHQYDVR0OBBYEFIQYzIU07LwMlJQuCFmcx7IQTgoIMA0GCSqGSIb3DQEBCwUA
A4IBAQCY8jdaQZChGsV2USggNiMOruYou6r4lK5IpDB/G/wkjUu0yKGX9rbxenDI
U5PMCCjjmCXPI6T53iHTfIUJrU6adTrCC2qJeHZERxhlbI1Bjjt/msv0tadQ1wUs
N+gDS63pYaACbvXy8MWy7Vu33PqUXHeeE6V/Uq2V8viTO96LXFvKWlJbYK8U90vv
o/ufQJVtMVT8QtPHRh8jrdkPSHCa2XV4cdFyQzR1bldZwgJcJmApzyMZFo6IQ6XU
5MsI+yMRQ+hDKXJioaldXgjUkK642M4UwtBV8ob2xJNDd2ZhwLnoQdeXeGADbkpy
rqXRfboQnoZsG4q5WTP468SQvvG5
-----END CERTIFICATE-----
"""

_THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}\Z")
_ARN = re.compile(r"arn:(?P<partition>[\w-]+):iot:(?P<region>[\w-]+):(?P<account>\d{12}):")


def check_thing_name(name: str) -> None:
    if not _THING_NAME.match(name):
        raise JobsctlError(f"invalid thing name {name!r}: use 1-128 characters of [a-zA-Z0-9:_-]")


def policy_name(thing_name: str) -> str:
    # Policy names allow [\\w+=,.@-] but not ':', which thing names may hold; '.' never occurs
    # in a thing name, so the mapping stays one-to-one.
    return "iotjobs-" + thing_name.replace(":", ".")


def policy_document(
    thing_name: str, region: str, account: str, partition: str = "aws"
) -> dict[str, Any]:
    """The least privilege a jobs agent needs: connect with its own name as client id, and
    publish/receive/subscribe on its own ``$aws/things/<name>/jobs/`` topics and (OTA over
    MQTT) its own ``$aws/things/<name>/streams/`` topics; for the application beside the agent
    (one MQTT session for both), publish on its telemetry topics ``dt/<name>/...`` and
    receive/subscribe on its command topics ``cmd/<name>/...``; nothing else."""
    check_thing_name(thing_name)
    arn = f"arn:{partition}:iot:{region}:{account}"
    mine = [f"$aws/things/{thing_name}/{api}/*" for api in ("jobs", "streams")]
    telemetry = f"dt/{thing_name}/*"  # iotjobs.agent.TELEMETRY
    commands = f"cmd/{thing_name}/*"  # iotjobs.agent.COMMANDS
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": f"{arn}:client/{thing_name}",
            },
            {
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": [f"{arn}:topic/{t}" for t in mine],
            },
            {
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": f"{arn}:topic/{telemetry}",
            },
            {
                "Effect": "Allow",
                "Action": "iot:Receive",
                "Resource": f"{arn}:topic/{commands}",
            },
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": [f"{arn}:topicfilter/{t}" for t in [*mine, commands]],
            },
        ],
    }


def amazon_root_ca() -> bytes:
    pem = AMAZON_ROOT_CA1_PEM.encode()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    if hashlib.sha256(der).hexdigest() != AMAZON_ROOT_CA1_SHA256:
        raise JobsctlError("the built-in Amazon Root CA 1 does not match its fingerprint")
    return pem


def ota_public_key(path: Path) -> bytes:
    """The PEM public key of an ECDSA P-256 signing key pair (``jobsctl image keygen``'s
    ``*.pub.pem``), checked: a board given anything else could never accept an image."""
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise JobsctlError(f"cannot read --ota-key {path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in pem:
        raise JobsctlError(
            f"--ota-key {path} is a private key: give its public half (e.g. signing.pub.pem); "
            "the signing key never goes onto a board"
        )
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise JobsctlError(f"--ota-key {path} is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise JobsctlError(f"--ota-key {path} is not an ECDSA P-256 key (jobsctl image keygen)")
    return pem


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JobsctlError(f"cannot create {out_dir}: {exc.strerror}") from None
    existing = [name for name in BUNDLE_FILES if (out_dir / name).exists()]
    if existing:
        raise JobsctlError(
            f"{out_dir} already holds a device bundle ({', '.join(existing)}): "
            "choose another --out; nothing was created"
        )
    if not os.access(out_dir, os.W_OK):
        raise JobsctlError(f"{out_dir} is not writable")


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def bundle_config(
    thing_name: str,
    endpoint: str,
    *,
    ota_key: bool = False,
    wifi_ssid: str | None = None,
    wifi_password: str | None = None,
) -> dict[str, Any]:
    """The board's config.json (every key: docs/configuration.md)."""
    config: dict[str, Any] = {
        "thing_name": thing_name,
        "client_id": thing_name,
        "endpoint": endpoint,
        "port": MQTT_PORT,
        "ca_file": CA_FILE,
        "cert_file": CERT_FILE,
        "key_file": KEY_FILE,
    }
    if ota_key:
        config["ota_key_file"] = OTA_KEY_FILE
    if wifi_ssid is not None:
        config["wifi_ssid"] = wifi_ssid
    if wifi_password is not None:
        config["wifi_password"] = wifi_password
    return config


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _ensure_policy(iot: Any, name: str, document: dict[str, Any]) -> str:
    """Create the policy when absent; an existing one must hold exactly this document."""
    try:
        existing = iot.get_policy(policyName=name)
    except ClientError as exc:
        if _code(exc) != "ResourceNotFoundException":
            raise
    else:
        if json.loads(existing["policyDocument"]) != document:
            raise JobsctlError(
                f"policy {name} already exists with a different document: "
                "review it (aws iot get-policy) and delete it or make it match"
            )
        return "existing"
    iot.create_policy(policyName=name, policyDocument=json.dumps(document))
    return "created"


def provision_aws(
    thing_name: str,
    out_dir: Path,
    iot_client: Any,
    group: str | None = None,
    *,
    ota_key: Path | None = None,
    wifi_ssid: str | None = None,
    wifi_password: str | None = None,
) -> dict[str, Any]:
    """Register ``thing_name`` on AWS IoT Core and write its device bundle into ``out_dir``."""
    check_thing_name(thing_name)
    if group is not None:
        check_thing_name(group)
    if wifi_password is not None and wifi_ssid is None:
        raise JobsctlError("--wifi-password needs --wifi-ssid")
    ota_pem = ota_public_key(ota_key) if ota_key is not None else None
    out_dir = Path(out_dir)
    made = not out_dir.exists()
    _prepare_out_dir(out_dir)
    try:
        return _provision(thing_name, out_dir, iot_client, group, ota_pem, wifi_ssid, wifi_password)
    except BaseException:
        # Nothing written yet (e.g. no credentials at the first call): leave no empty --out.
        if made and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def _provision(
    thing_name: str,
    out_dir: Path,
    iot: Any,
    group: str | None,
    ota_pem: bytes | None,
    wifi_ssid: str | None,
    wifi_password: str | None,
) -> dict[str, Any]:
    thing = iot.create_thing(thingName=thing_name)
    m = _ARN.match(str(thing.get("thingArn", "")))
    if not m:
        raise JobsctlError(f"unexpected thing ARN from CreateThing: {thing.get('thingArn')!r}")
    partition, region, account = m["partition"], m["region"], m["account"]
    if group:
        try:
            iot.create_thing_group(thingGroupName=group)
        except ClientError as exc:
            if _code(exc) != "ResourceAlreadyExistsException":
                raise
        iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing_name)

    keys = iot.create_keys_and_certificate(setAsActive=True)
    cert_arn = keys["certificateArn"]
    # The only copy of the private key: on disk before anything else can fail.
    _write(out_dir / KEY_FILE, keys["keyPair"]["PrivateKey"].encode(), private=True)
    _write(out_dir / CERT_FILE, keys["certificatePem"].encode())
    try:
        policy = policy_name(thing_name)
        policy_state = _ensure_policy(
            iot, policy, policy_document(thing_name, region, account, partition)
        )
        iot.attach_policy(policyName=policy, target=cert_arn)
        iot.attach_thing_principal(thingName=thing_name, principal=cert_arn)
        endpoint = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    except (ClientError, JobsctlError) as exc:
        detail = str(exc)
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            detail = f"{err.get('Code')}: {err.get('Message')}"
        raise JobsctlError(
            f"{detail} (certificate {keys['certificateId']} was created and its key saved in "
            f"{out_dir}; fix the cause, then attach it by hand or deactivate it)"
        ) from None

    _write(out_dir / CA_FILE, amazon_root_ca())
    if ota_pem is not None:
        _write(out_dir / OTA_KEY_FILE, ota_pem)
    config = bundle_config(
        thing_name,
        endpoint,
        ota_key=ota_pem is not None,
        wifi_ssid=wifi_ssid,
        wifi_password=wifi_password,
    )
    # The Wi-Fi password is a secret too: the file is readable by its owner only.
    _write(
        out_dir / CONFIG_FILE,
        (json.dumps(config, indent=2) + "\n").encode(),
        private=wifi_password is not None,
    )
    return {
        "thing_name": thing_name,
        "thing_arn": thing["thingArn"],
        "group": group,
        "certificate_id": keys["certificateId"],
        "certificate_arn": cert_arn,
        "policy_name": policy,
        "policy": policy_state,
        "endpoint": endpoint,
        "port": MQTT_PORT,
        "bundle": str(out_dir),
        "files": [str(out_dir / name) for name in BUNDLE_FILES if (out_dir / name).exists()],
    }
