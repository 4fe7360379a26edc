"""Provisioning on real AWS IoT Core, tested with botocore's Stubber (never a real account),
and the least-privilege policy proven with a small evaluator of AWS IoT policy matching."""

from __future__ import annotations

import hashlib
import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsctl import cli
from jobsctl.errors import JobsctlError
from jobsctl.provision import (
    AMAZON_ROOT_CA1_PEM,
    policy_document,
    policy_name,
    provision_aws,
)

REGION = "eu-central-1"
ACCOUNT = "123456789012"
ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}"
ENDPOINT = "a1b2c3d4e5f6g7-ats.iot.eu-central-1.amazonaws.com"
CERT_ID = "f" * 64
CERT_ARN = f"{ARN}:cert/{CERT_ID}"
CERT_PEM = "-----BEGIN CERTIFICATE-----\nMIIB...device...\n-----END CERTIFICATE-----\n"
KEY_PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIE...secret...\n-----END RSA PRIVATE KEY-----\n"


# --- a small evaluator of AWS IoT policies ---------------------------------------------------
# AWS IoT policy resources match with '*' (any run of characters, '/' included) and '?' (one
# character); MQTT's '+' and '#' are literal characters there. Policy variables ${...} are
# substituted from the connection; a statement whose variable cannot be resolved does not
# apply. An explicit Deny wins over any Allow; nothing is allowed unless a statement says so.


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _glob(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _substitute(pattern: str, variables: dict[str, str]) -> str | None:
    missing = False

    def one(m: re.Match[str]) -> str:
        nonlocal missing
        if m[1] not in variables:
            missing = True
            return ""
        return variables[m[1]]

    out = re.sub(r"\$\{([^}]+)\}", one, pattern)
    return None if missing else out


def allowed(
    doc: dict[str, Any], action: str, resource: str, variables: dict[str, str] | None = None
) -> bool:
    variables = variables or {}
    allow = False
    for statement in doc["Statement"]:
        if not any(_glob(a, action) for a in _as_list(statement["Action"])):
            continue
        for pattern in _as_list(statement["Resource"]):
            concrete = _substitute(pattern, variables)
            if concrete is not None and _glob(concrete, resource):
                if statement["Effect"] == "Deny":
                    return False
                allow = True
    return allow


def test_evaluator_star_spans_levels_and_mqtt_wildcards_are_literal() -> None:
    doc = {"Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "topic/a/*"}]}
    assert allowed(doc, "iot:Publish", "topic/a/b/c")
    assert not allowed(doc, "iot:Publish", "topic/ab")
    plus = {"Statement": [{"Effect": "Allow", "Action": "iot:Publish", "Resource": "topic/a/+"}]}
    assert allowed(plus, "iot:Publish", "topic/a/+")
    assert not allowed(plus, "iot:Publish", "topic/a/b")


def test_evaluator_resolves_variables_and_deny_wins() -> None:
    doc = {
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": "client/${iot:Connection.Thing.ThingName}",
            },
            {"Effect": "Deny", "Action": "iot:Connect", "Resource": "client/banned"},
        ]
    }
    me = {"iot:Connection.Thing.ThingName": "dev-1"}
    assert allowed(doc, "iot:Connect", "client/dev-1", me)
    assert not allowed(doc, "iot:Connect", "client/dev-2", me)
    assert not allowed(doc, "iot:Connect", "client/dev-1", {})  # unresolved: no match
    assert not allowed(
        doc, "iot:Connect", "client/banned", {"iot:Connection.Thing.ThingName": "banned"}
    )


# --- the policy document ---------------------------------------------------------------------

ME = "dev-1"
DOC = policy_document(ME, REGION, ACCOUNT)


def _own_requests(name: str) -> list[tuple[str, str]]:
    t = f"{ARN}:topic/$aws/things/{name}/jobs"
    f = f"{ARN}:topicfilter/$aws/things/{name}/jobs"
    return [
        ("iot:Connect", f"{ARN}:client/{name}"),
        ("iot:Publish", f"{t}/get"),
        ("iot:Publish", f"{t}/start-next"),
        ("iot:Publish", f"{t}/job-7/get"),
        ("iot:Publish", f"{t}/job-7/update"),
        ("iot:Receive", f"{t}/notify-next"),
        ("iot:Receive", f"{t}/start-next/accepted"),
        ("iot:Receive", f"{t}/job-7/update/rejected"),
        ("iot:Subscribe", f"{f}/notify-next"),
        ("iot:Subscribe", f"{f}/+/update/accepted"),
        ("iot:Subscribe", f"{f}/start-next/rejected"),
        # OTA over MQTT streams (iotjobs.stream)
        ("iot:Publish", f"{ARN}:topic/$aws/things/{name}/streams/AFR_OTA-1/get/json"),
        ("iot:Receive", f"{ARN}:topic/$aws/things/{name}/streams/AFR_OTA-1/data/cbor"),
        ("iot:Receive", f"{ARN}:topic/$aws/things/{name}/streams/AFR_OTA-1/rejected/json"),
        ("iot:Subscribe", f"{ARN}:topicfilter/$aws/things/{name}/streams/AFR_OTA-1/data/json"),
        # the application's telemetry and commands (iotjobs.agent.publish, subscribe)
        ("iot:Publish", f"{ARN}:topic/dt/{name}/reading"),
        ("iot:Receive", f"{ARN}:topic/cmd/{name}/window"),
        ("iot:Subscribe", f"{ARN}:topicfilter/cmd/{name}/window"),
        ("iot:Subscribe", f"{ARN}:topicfilter/cmd/{name}/+"),
    ]


def test_policy_lets_a_thing_connect_as_itself_and_use_its_own_jobs_topics() -> None:
    for action, resource in _own_requests(ME):
        assert allowed(DOC, action, resource), (action, resource)


@pytest.mark.parametrize(
    "other", ["dev-2", "dev-10", "dev-1x", "dev", "dev-1:a", "DEV-1", "x-dev-1", "dev_1"]
)
def test_policy_refuses_every_use_of_another_things_client_id_and_topics(other: str) -> None:
    for action, resource in _own_requests(other):
        assert not allowed(DOC, action, resource), (action, resource)


def test_policy_refuses_wildcard_filters_and_topics_outside_the_jobs_prefix() -> None:
    denied = [
        ("iot:Subscribe", f"{ARN}:topicfilter/#"),
        ("iot:Subscribe", f"{ARN}:topicfilter/$aws/things/+/jobs/notify-next"),
        ("iot:Subscribe", f"{ARN}:topicfilter/$aws/things/#"),
        ("iot:Subscribe", f"{ARN}:topicfilter/$aws/things/{ME}/#"),
        ("iot:Publish", f"{ARN}:topic/$aws/things/{ME}/shadow/update"),
        ("iot:Publish", f"{ARN}:topic/$aws/things/{ME}/jobsx/get"),
        ("iot:Publish", f"{ARN}:topic/$aws/things/{ME}/streamsx/get/json"),
        ("iot:Receive", f"{ARN}:topic/$aws/things/{ME}/jobs"),
        ("iot:Publish", f"{ARN}:topic/telemetry/{ME}"),
        ("iot:Publish", f"{ARN}:topic/dt/{ME}"),
        ("iot:Publish", f"{ARN}:topic/dt/{ME}x/reading"),
        ("iot:Publish", f"{ARN}:topic/cmd/{ME}/window"),
        ("iot:Receive", f"{ARN}:topic/dt/{ME}/reading"),
        ("iot:Subscribe", f"{ARN}:topicfilter/dt/+/reading"),
        ("iot:Subscribe", f"{ARN}:topicfilter/dt/{ME}/reading"),
        ("iot:Subscribe", f"{ARN}:topicfilter/cmd/#"),
        ("iot:Subscribe", f"{ARN}:topicfilter/cmd/+/window"),
        ("iot:Connect", f"{ARN}:client/{ME}-2"),
        ("iot:Connect", f"{ARN}:client/"),
        ("iot:UpdateThingShadow", f"{ARN}:thing/{ME}"),
        ("iot:RetainPublish", f"{ARN}:topic/$aws/things/{ME}/jobs/get"),
    ]
    for action, resource in denied:
        assert not allowed(DOC, action, resource), (action, resource)


def test_policy_is_bound_to_its_region_and_account() -> None:
    elsewhere = f"arn:aws:iot:us-east-1:{ACCOUNT}:topic/$aws/things/{ME}/jobs/get"
    other_account = f"arn:aws:iot:{REGION}:999999999999:client/{ME}"
    assert not allowed(DOC, "iot:Publish", elsewhere)
    assert not allowed(DOC, "iot:Connect", other_account)


NAMES = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-",
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(NAMES, NAMES)
def test_policy_of_any_thing_never_reaches_any_other_thing(me: str, other: str) -> None:
    doc = policy_document(me, REGION, ACCOUNT)
    for action, resource in _own_requests(me):
        assert allowed(doc, action, resource)
    if other != me:
        for action, resource in _own_requests(other):
            assert not allowed(doc, action, resource), (me, other, action, resource)


def test_policy_document_refuses_a_name_that_would_widen_it() -> None:
    for bad in ("*", "dev-?", "dev/1", "", "a" * 129, "${iot:ClientId}"):
        with pytest.raises(JobsctlError, match="invalid thing name"):
            policy_document(bad, REGION, ACCOUNT)


def test_policy_names_are_valid_and_distinct_for_names_with_colons() -> None:
    assert re.fullmatch(r"[\w+=,.@-]+", policy_name("site:dev_1"))
    assert policy_name("a:b") != policy_name("a_b")


# --- provisioning against a stubbed IoT client -------------------------------------------------


@pytest.fixture()
def iot() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client(
        "iot",
        region_name=REGION,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
    )
    with Stubber(client) as stubber:
        yield client, stubber


def _expect_up_to_keys(stubber: Stubber, group: str | None = None) -> None:
    stubber.add_response(
        "create_thing",
        {"thingName": ME, "thingArn": f"{ARN}:thing/{ME}", "thingId": "id-1"},
        {"thingName": ME},
    )
    if group:
        stubber.add_client_error(
            "create_thing_group",
            "ResourceAlreadyExistsException",
            http_status_code=409,
            expected_params={"thingGroupName": group},
        )
        stubber.add_response(
            "add_thing_to_thing_group", {}, {"thingGroupName": group, "thingName": ME}
        )
    stubber.add_response(
        "create_keys_and_certificate",
        {
            "certificateArn": CERT_ARN,
            "certificateId": CERT_ID,
            "certificatePem": CERT_PEM,
            "keyPair": {"PublicKey": "pub", "PrivateKey": KEY_PEM},
        },
        {"setAsActive": True},
    )


def _expect_rest(stubber: Stubber, policy_exists: bool = False) -> None:
    name = policy_name(ME)
    if policy_exists:
        stubber.add_response(
            "get_policy",
            {"policyName": name, "policyDocument": json.dumps(DOC)},
            {"policyName": name},
        )
    else:
        stubber.add_client_error(
            "get_policy",
            "ResourceNotFoundException",
            http_status_code=404,
            expected_params={"policyName": name},
        )
        stubber.add_response(
            "create_policy",
            {"policyName": name},
            {"policyName": name, "policyDocument": json.dumps(DOC)},
        )
    stubber.add_response("attach_policy", {}, {"policyName": name, "target": CERT_ARN})
    stubber.add_response("attach_thing_principal", {}, {"thingName": ME, "principal": CERT_ARN})
    stubber.add_response(
        "describe_endpoint", {"endpointAddress": ENDPOINT}, {"endpointType": "iot:Data-ATS"}
    )


def test_provision_makes_the_calls_in_order_and_writes_a_ready_bundle(
    iot: tuple[Any, Stubber], tmp_path: Path
) -> None:
    client, stubber = iot
    _expect_up_to_keys(stubber, group="fleet")
    _expect_rest(stubber)
    out = tmp_path / "bundle"
    info = provision_aws(ME, out, client, group="fleet")
    stubber.assert_no_pending_responses()

    assert info["endpoint"] == ENDPOINT and info["policy"] == "created"
    assert info["certificate_id"] == CERT_ID
    config = json.loads((out / "config.json").read_text())
    assert config == {
        "thing_name": ME,
        "client_id": ME,
        "endpoint": ENDPOINT,
        "port": 8883,
        "ca_file": "AmazonRootCA1.pem",
        "cert_file": "device.pem",
        "key_file": "device.key",
    }
    assert (out / "device.pem").read_text() == CERT_PEM
    assert (out / "device.key").read_text() == KEY_PEM
    assert stat.S_IMODE((out / "device.key").stat().st_mode) == 0o600
    assert (out / "AmazonRootCA1.pem").read_text() == AMAZON_ROOT_CA1_PEM
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "device.pem", "device.key", "AmazonRootCA1.pem"]
    )


def test_bundled_root_ca_is_amazon_root_ca_1_by_its_sha256_fingerprint() -> None:
    cert = x509.load_pem_x509_certificate(AMAZON_ROOT_CA1_PEM.encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    # Published by Amazon Trust Services for https://www.amazontrust.com/repository/AmazonRootCA1.pem
    assert hashlib.sha256(der).hexdigest().upper() == (
        "8ECDE6884F3D87B1125BA31AC3FCB13D7016DE7F57CC904FE1CB97C6AE98196E"
    )
    assert cert.subject.rfc4514_string() == "CN=Amazon Root CA 1,O=Amazon,C=US"


def test_provision_reuses_an_existing_identical_policy(
    iot: tuple[Any, Stubber], tmp_path: Path
) -> None:
    client, stubber = iot
    _expect_up_to_keys(stubber)
    _expect_rest(stubber, policy_exists=True)
    info = provision_aws(ME, tmp_path / "b", client)
    stubber.assert_no_pending_responses()
    assert info["policy"] == "existing"


def test_provision_refuses_an_existing_policy_with_other_rights_but_keeps_the_key(
    iot: tuple[Any, Stubber], tmp_path: Path
) -> None:
    client, stubber = iot
    _expect_up_to_keys(stubber)
    wide = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}],
    }
    stubber.add_response(
        "get_policy",
        {"policyName": policy_name(ME), "policyDocument": json.dumps(wide)},
        {"policyName": policy_name(ME)},
    )
    out = tmp_path / "b"
    with pytest.raises(JobsctlError, match=f"different document.*certificate {CERT_ID}"):
        provision_aws(ME, out, client)
    stubber.assert_no_pending_responses()
    assert (out / "device.key").read_text() == KEY_PEM  # AWS never shows the key again
    assert not (out / "config.json").exists()


def test_provision_failing_after_the_key_was_issued_says_where_the_key_is(
    iot: tuple[Any, Stubber], tmp_path: Path
) -> None:
    client, stubber = iot
    _expect_up_to_keys(stubber)
    stubber.add_client_error(
        "get_policy", "AccessDeniedException", "not authorized", http_status_code=403
    )
    out = tmp_path / "b"
    with pytest.raises(JobsctlError) as err:
        provision_aws(ME, out, client)
    assert "AccessDeniedException: not authorized" in str(err.value)
    assert str(out) in str(err.value)
    assert (out / "device.key").exists()


def test_provision_refuses_an_out_dir_with_a_bundle_before_calling_aws(
    iot: tuple[Any, Stubber], tmp_path: Path
) -> None:
    client, _stubber = iot  # no responses queued: any AWS call would fail the stubber
    (tmp_path / "device.key").write_text("an older key, precious")
    with pytest.raises(JobsctlError, match="already holds a device bundle"):
        provision_aws(ME, tmp_path, client)
    assert (tmp_path / "device.key").read_text() == "an older key, precious"


def test_cli_provision_reports_bad_input_and_missing_profile_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    assert cli.main(["provision", "--aws", "bad/name", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jobsctl: invalid thing name") and err.count("\n") == 1

    rc = cli.main(
        ["provision", "--aws", "dev-1", "--out", str(tmp_path / "o"), "--profile", "nope"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "nope" in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "device.key").exists()


def test_provision_writes_a_complete_bundle_with_the_ota_key_and_wifi(
    iot: tuple[Any, Stubber], tmp_path: Path
) -> None:
    from jobsctl import image

    client, stubber = iot
    _expect_up_to_keys(stubber)
    _expect_rest(stubber)
    pub = image.keygen(tmp_path / "signing.pem")
    out = tmp_path / "bundle"
    info = provision_aws(
        ME, out, client, ota_key=pub, wifi_ssid="home", wifi_password="wifi secret"
    )
    stubber.assert_no_pending_responses()
    config = json.loads((out / "config.json").read_text())
    assert config["ota_key_file"] == "ota_key.pem" and (out / "ota_key.pem").read_bytes() == (
        pub.read_bytes()
    )
    assert config["wifi_ssid"] == "home" and config["wifi_password"] == "wifi secret"
    assert stat.S_IMODE((out / "config.json").stat().st_mode) == 0o600  # holds a secret
    assert str(out / "ota_key.pem") in info["files"]


def test_provision_refuses_a_private_or_foreign_ota_key_before_calling_aws(
    iot: tuple[Any, Stubber], tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from jobsctl import image

    client, _stubber = iot  # no responses queued: any AWS call would fail the stubber
    image.keygen(tmp_path / "signing.pem")
    with pytest.raises(JobsctlError, match="is a private key: give its public half"):
        provision_aws(ME, tmp_path / "b1", client, ota_key=tmp_path / "signing.pem")
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    (tmp_path / "p384.pem").write_bytes(
        other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(JobsctlError, match="not an ECDSA P-256 key"):
        provision_aws(ME, tmp_path / "b2", client, ota_key=tmp_path / "p384.pem")
    with pytest.raises(JobsctlError, match="--wifi-password needs --wifi-ssid"):
        provision_aws(ME, tmp_path / "b3", client, wifi_password="x")
    assert not any((tmp_path / d).exists() for d in ("b1", "b2", "b3"))
