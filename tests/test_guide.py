"""docs/real-hardware.md, run: every `aws` command it shows checked against botocore's models
(a stubbed client: the parameter names and types AWS would take), every `jobsctl` command
parsed by jobsctl, the guide's own facts checked against each other, and the whole flow
(provision, bundle, deploy to a simulated board, the guide's `afr_ota` job) on the local stack,
ending SUCCEEDED. No AWS account is used."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from plugin_agent import details, final
from plugin_stack import unique

from harness.rawrepl import RawReplBridge
from jobsctl import cli, image
from jobsctl.checkout import ROOT
from jobsctl.commands import aws as aws_command
from jobsctl.device import DeviceProcess
from jobsctl.stack import Stack

GUIDE = ROOT / "docs" / "real-hardware.md"
GLOBAL_OPTIONS = {"--profile", "--region", "--output"}


def _text() -> str:
    return GUIDE.read_text()


def blocks() -> tuple[list[tuple[str, str, str]], str]:
    """The guide's fenced blocks as (language, text, the prose just before it), and the
    prose (everything outside the blocks)."""
    out: list[tuple[str, str, str]] = []
    prose: list[str] = []
    before: list[str] = []
    lang: str | None = None
    body: list[str] = []
    for line in _text().splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                out.append((lang, "\n".join(body) + "\n", "\n".join(before)))
                lang, before = None, []
        elif lang is None:
            prose.append(line)
            before.append(line)
        else:
            body.append(line)
    return out, "\n".join(prose)


def commands(prefix: str) -> list[list[str]]:
    """Every command of the guide that starts with ``prefix`` (in code blocks, continuation
    lines joined, and whole commands in inline code), as argv lists."""
    found: list[str] = []
    fenced, prose = blocks()
    for lang, body, _ in fenced:
        if lang:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line.startswith(prefix + " "):
                found.append(line)
    for code in re.findall(r"`([^`]+)`", prose):
        code = " ".join(code.split())
        if code.startswith(prefix + " ") and " --" in code:  # a whole command, not a mention
            found.append(code)
    return [shlex.split(c) for c in found]


def json_files() -> dict[str, str]:
    """The guide's JSON files: each ```json block under the last `NAME.json` named before it."""
    out: dict[str, str] = {}
    for lang, body, before in blocks()[0]:
        if lang != "json":
            continue
        names = re.findall(r"`([\w.-]+\.json)`", before)
        assert names, f"a JSON block of the guide has no file name before it: {body[:60]}"
        out[names[-1]] = body
    return out


# --- the `aws` commands against botocore's models ---------------------------------------------


def _client(service: str) -> Any:
    return boto3.client(
        service, region_name="eu-central-1", aws_access_key_id="AK", aws_secret_access_key="SK"
    )


def _value(shape: Any, text: str, files: dict[str, str]) -> Any:
    if text.startswith("file://"):
        text = files[text[len("file://") :]]
    kind = shape.type_name
    if kind in ("list", "structure") and text.lstrip()[:1] in ("[", "{"):  # the CLI's JSON form
        return json.loads(text)
    if kind == "list":
        return [_value(shape.member, text, files)]
    if kind == "structure":  # the CLI's shorthand: k=v,k2=v2
        out = {}
        for pair in text.split(","):
            k, _, v = pair.partition("=")
            out[k] = _value(shape.members[k], v, files)
        return out
    if kind in ("integer", "long"):
        return int(text)
    if kind == "boolean":
        return text.lower() == "true"
    return text


def _minimal(shape: Any) -> Any:
    """The smallest response botocore accepts for ``shape`` (its required members only)."""
    import datetime as dt

    if shape is None:
        return {}
    kind = shape.type_name
    if kind == "structure":
        return {m: _minimal(shape.members[m]) for m in shape.required_members}
    return {
        "list": [],
        "map": {},
        "integer": 0,
        "long": 0,
        "boolean": False,
        "timestamp": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    }.get(kind, "x" * max(1, shape.metadata.get("min", 1)))


def aws_call(argv: list[str], files: dict[str, str]) -> tuple[str, str, dict[str, Any]]:
    """`aws SERVICE OP --opt value ...` -> (service, boto3 method, parameters)."""
    assert argv[0] == "aws"
    service, op = argv[1], argv[2]
    client = _client(service)
    method = op.replace("-", "_")
    model = client.meta.service_model.operation_model(client.meta.method_to_api_mapping[method])
    members = {name.lower(): (name, shape) for name, shape in model.input_shape.members.items()}
    params: dict[str, Any] = {}
    args = argv[3:]
    while args:
        opt, args = args[0], args[1:]
        assert opt.startswith("--"), f"{argv}: {opt}"
        value, args = (args[0], args[1:]) if args and not args[0].startswith("--") else ("", args)
        if opt in GLOBAL_OPTIONS:
            continue
        name, shape = members[opt[2:].replace("-", "")]
        params[name] = _value(shape, value, files) if value else True
    return service, method, params


def test_every_aws_command_of_the_guide_is_a_valid_call() -> None:
    files = json_files()
    calls = [argv for argv in commands("aws") if argv[1] not in ("configure", "s3")]
    assert len(calls) >= 8
    for argv in calls:
        service, method, params = aws_call(argv, files)
        client = _client(service)
        op = client.meta.service_model.operation_model(client.meta.method_to_api_mapping[method])
        with Stubber(client) as stubber:
            stubber.add_response(method, _minimal(op.output_shape), None)
            # Raises ParamValidationError for a name or type AWS would not take.
            getattr(client, method)(**params)
            stubber.assert_no_pending_responses()


def test_every_jobsctl_command_of_the_guide_parses() -> None:
    parser = cli.build_parser()
    argvs = commands(".venv/bin/jobsctl") + commands("jobsctl")
    assert len(argvs) >= 8
    for argv in argvs:
        args = parser.parse_args(argv[1:])
        assert callable(args.func), argv


def test_the_guides_facts_agree_with_each_other() -> None:
    files = json_files()
    for text in files.values():
        json.loads(text)  # each file is JSON as shown
    doc = json.loads(files["ota-job.json"])["afr_ota"]["files"][0]
    assert doc["filesize"] <= image.SLOT_SIZE  # it fits the slot the page names
    assert str(image.SLOT_SIZE) in _text() and hex(image.SLOT_SIZE) in _text()
    url = re.fullmatch(
        r"\$\{aws:iot:s3-presigned-url-v2:https://s3\.([a-z0-9-]+)\.amazonaws\.com/([^/]+)/(.+)\}",
        doc["update_data_url"],
    )
    assert url, doc["update_data_url"]
    [cp] = commands("aws s3 cp")
    assert cp[4] == f"s3://{url[2]}/{url[3]}"  # the job names the object that was uploaded
    # The role: AWS IoT may assume it, it may read that object, and the job uses it.
    trust = json.loads(files["iot-s3-presign-trust.json"])["Statement"][0]
    assert trust["Principal"] == {"Service": "iot.amazonaws.com"}
    assert trust["Action"] == "sts:AssumeRole"
    policy = json.loads(files["iot-s3-presign-policy.json"])["Statement"][0]
    assert policy["Action"] == "s3:GetObject"
    assert fnmatch.fnmatchcase(f"arn:aws:s3:::{url[2]}/{url[3]}", policy["Resource"])
    [role] = [a for a in commands("aws iam create-role")]
    role_name = role[role.index("--role-name") + 1]
    [job] = [a for a in commands("aws iot create-job") if "file://ota-job.json" in a]
    _, _, params = aws_call(job, files)
    assert params["presignedUrlConfig"]["roleArn"].endswith(f":role/{role_name}")
    # The firmware to flash is named as MicroPython's downloads are: with the build date.
    assert re.search(r"ESP32_GENERIC-OTA-\d{8}-v\d+\.\d+\.\d+\.bin", _text())
    # Provisioning installs the OTA key and the Wi-Fi settings; the reference exists.
    [prov] = commands(".venv/bin/jobsctl provision")
    assert {"--ota-key", "--wifi-ssid", "--wifi-password"} <= set(prov)
    assert "(configuration.md)" in _text() and (ROOT / "docs" / "configuration.md").exists()


# --- the whole flow on the local stack ---------------------------------------------------------


def _stubbed_iot(stack: Stack, name: str, group: str) -> Any:
    """An ``iot`` client whose answers are what AWS would answer, with the certificate that the
    local CA issued for the thing (so that the bundle works against the local broker)."""
    info = stack.create_thing(name, group=group)
    client = _client("iot")
    stubber = Stubber(client)
    arn = f"arn:aws:iot:eu-central-1:123456789012:thing/{name}"
    cert_arn = f"arn:aws:iot:eu-central-1:123456789012:cert/{info['certificate_id']}"
    stubber.add_response("create_thing", {"thingName": name, "thingArn": arn}, {"thingName": name})
    stubber.add_response("create_thing_group", {}, {"thingGroupName": group})
    stubber.add_response(
        "add_thing_to_thing_group", {}, {"thingGroupName": group, "thingName": name}
    )
    stubber.add_response(
        "create_keys_and_certificate",
        {
            "certificateArn": cert_arn,
            "certificateId": info["certificate_id"],
            "certificatePem": Path(info["cert_file"]).read_text(),
            "keyPair": {"PublicKey": "-", "PrivateKey": Path(info["key_file"]).read_text()},
        },
        {"setAsActive": True},
    )
    stubber.add_client_error("get_policy", "ResourceNotFoundException", http_status_code=404)
    stubber.add_response("create_policy", {}, {"policyName": ANY, "policyDocument": ANY})
    stubber.add_response("attach_policy", {}, {"policyName": ANY, "target": cert_arn})
    stubber.add_response("attach_thing_principal", {}, {"thingName": name, "principal": cert_arn})
    stubber.add_response(
        "describe_endpoint", {"endpointAddress": "localhost"}, {"endpointType": "iot:Data-ATS"}
    )
    stubber.activate()
    return client


def test_the_guide_from_provisioning_to_an_afr_ota_job_that_succeeds(
    stack_session: Stack,
    sim_board: RawReplBridge,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack = stack_session
    name, group = unique("kitchen"), unique("fleet")
    monkeypatch.chdir(tmp_path)  # the guide's relative paths (signing.pem, bundles/...) land here
    here = {"kitchen-1": name, "fleet": group}

    def guide(prefix: str, **also: str) -> list[str]:
        [argv] = commands(prefix)
        swap = {**here, **also}
        return [swap.get(a, a).replace("bundles/kitchen-1", f"bundles/{name}") for a in argv]

    # 1. the signing key and the thing, as the guide provisions them
    assert cli.main(guide(".venv/bin/jobsctl image keygen")[1:]) == 0
    client = _stubbed_iot(stack, name, group)
    monkeypatch.setattr(aws_command, "iot_client", lambda region, profile: client)
    assert cli.main(guide(".venv/bin/jobsctl provision")[1:]) == 0
    bundle = tmp_path / "bundles" / name
    config = json.loads((bundle / "config.json").read_text())
    assert config["ota_key_file"] == "ota_key.pem" and config["wifi_ssid"] == "MyWifi"
    assert (bundle / "ota_key.pem").read_bytes() == (tmp_path / "signing.pub.pem").read_bytes()
    # The two facts that differ on loopback: where the broker listens, and who signed it.
    config["port"] = stack.mqtt_port
    (bundle / "config.json").write_text(json.dumps(config))
    (bundle / "AmazonRootCA1.pem").write_bytes(Path(stack.endpoints["ca_file"]).read_bytes())

    # 3. deploy, as the guide does it (make deploy PORT=... BUNDLE=...)
    argv = guide("make deploy")
    argv = [
        f"PORT={sim_board.port}"
        if a.startswith("PORT=")
        else f"BUNDLE={bundle}"
        if a.startswith("BUNDLE=")
        else a
        for a in argv
    ]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all SHA-256 match" in r.stdout
    board = sim_board.board_dir
    image.init_sim_flash(board, version="1.0.0")  # flashed with the OTA firmware (step 2)
    path = [".frozen", "lib", str(ROOT / "sim"), str(ROOT / "build" / "upylib")]
    dev = DeviceProcess(board, root=board, env={"MICROPYPATH": os.pathsep.join(path)})
    dev.start()
    try:
        dev.wait_for("no pending job", timeout=60)

        # 4. an image, its size and signature, the upload, the guide's afr_ota job
        firmware = tmp_path / "micropython.bin"
        built = ["image", "build", "--version", "1.25.1", "--size", "1400k", "-o", str(firmware)]
        assert cli.main(built) == 0
        capsys.readouterr()
        assert (
            cli.main(
                guide(".venv/bin/jobsctl image info", **{"micropython.bin": str(firmware)})[1:]
            )
            == 0
        )
        size = json.loads(capsys.readouterr().out)["size"]
        sign = guide(".venv/bin/jobsctl image sign", **{"micropython.bin": str(firmware)})
        assert cli.main(sign[1:]) == 0
        signature = capsys.readouterr().out.strip()
        region, account, bucket = (
            stack.endpoints["region"],
            str(stack.endpoints["account_id"]),
            stack.endpoints["bucket"],
        )
        [cp] = commands("aws s3 cp")
        key = cp[4].split("/", 3)[3]
        stack.upload(key, firmware.read_bytes())
        files = json_files()
        files["ota-job.json"] = (
            files["ota-job.json"]
            .replace("1468416", str(size))
            .replace("<base64 DER signature from jobsctl image sign>", signature)
            .replace("my-firmware", bucket)
            .replace("eu-central-1", region)
        )
        [create] = [a for a in commands("aws iot create-job") if "file://ota-job.json" in a]
        job_id = unique("ota-v1-25-1")
        local = [
            a.replace("eu-central-1", region)
            .replace("ACCOUNT", account)
            .replace(":thinggroup/fleet", f":thinggroup/{group}")
            for a in create
        ]
        local[local.index("--job-id") + 1] = job_id
        _, method, params = aws_call(local, files)
        assert method == "create_job"
        stack.iot_client().create_job(**params)
        ex = final(stack, name, job_id, timeout=120)
        assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
        assert details(ex)["firmware"] == "1.25.1"
        running = json.loads((board / "flash" / "otadata.json").read_text())["running"]
        assert image.read_app_version(image.slot_image(board, running)) == "1.25.1"
    finally:
        dev.stop()
