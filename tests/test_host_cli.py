"""What a new user meets on the host: sizes refused before an upload, the reasons boards gave,
and one clear line for every mistake (`jobsctl --version`, help for every argument, a missing
region, port or firmware)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from plugin_stack import JobsDevice, unique

from jobsctl import __version__, cli, image, otajob
from jobsctl.checkout import ROOT
from jobsctl.stack import Stack

JOBSCTL = Path(sys.executable).parent / "jobsctl"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str) -> str:
    assert err.startswith("jobsctl: ") and err.count("\n") == 1, err
    return err


CSV = """\
# Name,   Type, SubType, Offset,  Size, Flags
nvs,      data, nvs,     0x9000,  0x4000,
otadata,  data, ota,     0xd000,  0x2000,
phy_init, data, phy,     0xf000,  0x1000,
ota_0,    app,  ota_0,   0x10000, 1M,
ota_1,    app,  ota_1,   ,        0x100000,
vfs,      data, fat,     ,        0x200000,
"""


# --- 4. sizes: refused before anything is made or uploaded --------------------------------------


def test_image_build_refuses_an_image_larger_than_the_slot(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "app.bin"
    rc, _, err = run(capsys, "image", "build", "--version", "2.0", "--size", "2M", "-o", str(out))
    assert rc == 1 and "does not fit the 1572864-byte OTA slot" in one_line(err)
    assert not out.exists()
    layout = tmp_path / "partitions.csv"
    layout.write_text(CSV)
    argv = ["image", "build", "--version", "2.0", "--size", "1200k", "-o", str(out)]
    rc, _, err = run(capsys, *argv, "--partitions", str(layout))
    assert rc == 1 and "does not fit the 1048576-byte OTA slot" in one_line(err)
    assert run(capsys, *argv)[0] == 0 and out.exists()  # the default 4 MiB OTA layout: fits
    rc, _, err = run(capsys, "image", "info", str(out), "--partitions", str(layout))
    assert rc == 1 and "do not fit a 1048576-byte OTA slot" in one_line(err)


def test_image_build_and_sign_rewrite_their_own_output_and_nothing_else(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out, sig, key = tmp_path / "app.bin", tmp_path / "app.sig", tmp_path / "k.pem"
    assert run(capsys, "image", "keygen", str(key))[0] == 0
    assert run(capsys, "image", "build", "--version", "1.0", "-o", str(out))[0] == 0
    assert run(capsys, "image", "build", "--version", "1.1", "-o", str(out))[0] == 0  # rebuilt
    assert run(capsys, "image", "info", str(out))[1].count('"version": "1.1"') == 1
    assert run(capsys, "image", "sign", str(out), "--key", str(key), "-o", str(sig))[0] == 0
    assert run(capsys, "image", "sign", str(out), "--key", str(key), "-o", str(sig))[0] == 0
    # What a user made is refused, untouched, in one line.
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    rc, _, err = run(capsys, "image", "build", "--version", "2.0", "-o", str(notes))
    assert rc == 1 and "is not an app image; not overwriting it\n" in one_line(err)
    rc, _, err = run(capsys, "image", "sign", str(out), "--key", str(key), "-o", str(notes))
    assert rc == 1 and "is not a signature; not overwriting it\n" in one_line(err)
    assert notes.read_text() == "my notes\n"
    rc, _, err = run(capsys, "image", "build", "--version", "2.0", "-o", str(tmp_path))
    assert rc == 1 and "not overwriting it" in one_line(err)


def test_the_slot_is_read_from_a_csv_a_partition_table_or_a_firmware(tmp_path: Path) -> None:
    import struct

    from jobsctl.flash import ota_slot_size

    layout = tmp_path / "partitions.csv"
    layout.write_text(CSV)
    assert ota_slot_size(layout) == 0x100000
    entry = struct.Struct("<HBBII16sI")
    table = b"".join(
        entry.pack(0x50AA, t, st, off, size, name.encode(), 0)
        for t, st, off, size, name in [
            (1, 0x00, 0xD000, 0x2000, "otadata"),
            (0, 0x10, 0x10000, 0x180000, "ota_0"),
            (0, 0x11, 0x190000, 0x180000, "ota_1"),
        ]
    )
    (tmp_path / "pt.bin").write_bytes(table + b"\xff" * 32)
    assert ota_slot_size(tmp_path / "pt.bin") == 0x180000
    firmware = bytearray(b"\xe9" + b"\xff" * (0x8000 - 0x1000 - 1)) + table + b"\xff" * 64
    (tmp_path / "fw.bin").write_bytes(bytes(firmware))
    assert ota_slot_size(tmp_path / "fw.bin") == 0x180000
    (tmp_path / "factory.csv").write_text("factory, app, factory, 0x10000, 1M,\n")
    from jobsctl.errors import JobsctlError

    with pytest.raises(JobsctlError, match="no OTA app slot"):
        ota_slot_size(tmp_path / "factory.csv")


def _objects(stack: Stack) -> list[str]:
    s3 = stack.s3_client()
    listing = s3.list_objects_v2(Bucket=stack.endpoints["bucket"])
    return [o["Key"] for o in listing.get("Contents", [])]


def test_job_ota_and_bundle_refuse_what_does_not_fit_before_uploading(
    stack_session: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    stack = stack_session
    thing, job, version = unique("board"), unique("ota"), unique("v")
    stack.create_thing(thing)
    state = str(stack.state_dir)
    layout = tmp_path / "partitions.csv"
    layout.write_text(CSV)
    app = tmp_path / "app.bin"
    data = image.build_app_image(version, size=1200 * 1024)
    app.write_bytes(data)
    argv = ["job", "ota", job, "--state-dir", state, "--targets", thing, "--file", str(app)]
    rc, _, err = run(capsys, *argv, "--partitions", str(layout))
    assert rc == 1 and "do not fit a 1048576-byte OTA slot" in one_line(err)
    rc, _, err = run(capsys, *argv, "--slot-size", "1M")
    assert rc == 1 and "do not fit a 1048576-byte OTA slot" in one_line(err)
    big = tmp_path / "app"
    big.mkdir()
    (big / "blob.py").write_text("# " + "x" * (otajob.BUNDLE_MAX + 10) + "\n")
    rc, _, err = run(
        capsys,
        *["job", "bundle", unique("app"), "--state-dir", state, "--targets", thing],
        *["--dir", str(big), "--version", version],
    )
    assert rc == 1 and f"a board takes at most {otajob.BUNDLE_MAX}" in one_line(err)
    assert not [k for k in _objects(stack) if version in k]
    assert job not in [j["jobId"] for j in stack.iot_client().list_jobs()["jobs"]]
    # The same image on the default layout goes through.
    rc, out, _ = run(capsys, *argv)
    assert rc == 0 and json.loads(out)["document"]["size"] == 1200 * 1024


def test_bundle_limit_is_the_devices() -> None:
    text = (ROOT / "lib" / "iotjobs" / "bundle.py").read_text()
    m = re.search(r"^_MAX = const\((\d+)\)", text, re.M)
    assert m and int(m.group(1)) == otajob.BUNDLE_MAX


# --- 4. the reasons boards gave ------------------------------------------------------------------


@pytest.fixture()
def rejecting_board(
    stack_session: Stack, jobs_device: Callable[..., JobsDevice]
) -> Iterator[tuple[Stack, str, str]]:
    stack = stack_session
    dev = jobs_device(stack)
    job = unique("ota")
    stack.iot_client().create_job(
        jobId=job,
        targets=[stack.iot_client().describe_thing(thingName=dev.name)["thingArn"]],
        document=json.dumps({"operation": "ota", "sha265": "x"}),
    )
    outcome, _ = dev.request(
        f"{job}/update",
        {"status": "REJECTED", "statusDetails": {"reason": "unknown field 'sha265'"}},
    )
    assert outcome == "accepted"
    yield stack, dev.name, job


def test_job_executions_show_each_boards_reason_and_one_execution_in_full(
    rejecting_board: tuple[Stack, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    stack, thing, job = rejecting_board
    state = str(stack.state_dir)
    rc, out, _ = run(capsys, "job", "executions", "--state-dir", state, job)
    assert rc == 0
    [summary] = json.loads(out)["executionSummaries"]
    assert summary["jobExecutionSummary"]["status"] == "REJECTED"
    assert summary["statusDetails"] == {"reason": "unknown field 'sha265'"}
    rc, out, _ = run(capsys, "job", "executions", "--state-dir", state, "--thing", thing)
    assert json.loads(out)["executionSummaries"][0]["statusDetails"]["reason"].startswith(
        "unknown field"
    )
    rc, out, _ = run(capsys, "job", "execution", "--state-dir", state, job, thing)
    ex = json.loads(out)["execution"]
    assert rc == 0 and ex["status"] == "REJECTED" and ex["thingArn"].endswith(f":thing/{thing}")
    assert ex["statusDetails"]["detailsMap"] == {"reason": "unknown field 'sha265'"}
    assert "versionNumber" in ex and "lastUpdatedAt" in ex


# --- 6. messages ---------------------------------------------------------------------------------


def test_version_and_help_for_every_positional_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"jobsctl {__version__}"
    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.option_strings and not action.help:
                missing.append(f"{path} {action.dest}")

    walk(cli.build_parser(), "jobsctl")
    assert missing == []


def test_no_region_names_the_flag_and_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    rc, _, err = run(capsys, "job", "list")
    assert rc == 1
    assert one_line(err) == (
        "jobsctl: no AWS region: give --region or set AWS_REGION (or a region in the profile)\n"
    )


def test_provision_without_credentials_says_so_and_leaves_no_empty_out(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    out = tmp_path / "bundles" / "kitchen-1"
    rc, _, err = run(
        capsys, "provision", "--aws", "kitchen-1", "--out", str(out), "--region", "eu-central-1"
    )
    assert rc == 1 and "no AWS credentials" in one_line(err)
    assert "--state-dir" not in err  # provision is for real AWS only
    assert not out.exists()
    # `job` commands do have a local stack to suggest.
    rc, _, err = run(capsys, "job", "list", "--region", "eu-central-1")
    assert rc == 1 and "--state-dir" in one_line(err)


def test_a_serial_port_that_does_not_exist_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    port = str(tmp_path / "ttyUSB9")
    rc, _, err = run(capsys, "deploy", "--port", port)
    assert rc == 1 and one_line(err).startswith(f"jobsctl: {port} does not exist: is the board")
    rc, _, err = run(capsys, "flash", "--port", port, "--firmware", str(tmp_path / "fw.bin"))
    assert rc == 1 and f"{port} does not exist" in one_line(err)


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_make_flash_and_deploy_say_what_is_missing() -> None:
    r = _make("flash", "PORT=/dev/ttyUSB0")
    assert r.returncode != 0 and "make flash: FIRMWARE is missing" in r.stderr
    r = _make("flash", "FIRMWARE=fw.bin")
    assert r.returncode != 0 and "make flash: PORT is missing" in r.stderr
    r = _make("deploy")
    assert r.returncode != 0 and "make deploy: PORT is missing" in r.stderr
    r = subprocess.run(
        [str(JOBSCTL), "flash", "--port", "/dev/ttyUSB0", "--firmware", ""],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and r.stderr == (
        "jobsctl: no firmware file: give --firmware FILE (make flash FIRMWARE=FILE)\n"
    )


def test_make_help_names_the_variables() -> None:
    r = _make("help")
    assert r.returncode == 0
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if line.strip()}
    assert "DEVICES" in lines["demo"] and "BUNDLE" in lines["deploy"]
    assert "FIRMWARE" in lines["flash"] and "PORT" in lines["deploy"]


def test_readme_quickstart_keeps_its_files_under_local() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Local quickstart", 1)[1].split("\n## ", 1)[0]
    assert "-o .local/app.bin" in quick and "--file .local/app.bin" in quick
    assert " app.bin" not in quick.replace(".local/app.bin", "")
