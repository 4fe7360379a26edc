"""The stack as a whole: persistence across restarts, broker restarts, and the CLI."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from plugin_stack import JobsDevice, served, unique

from jobsctl.cli import main
from jobsctl.errors import JobsctlError
from jobsctl.stack import Stack

ARN = "arn:aws:iot:us-east-1:123456789012"
JOBSCTL = Path(sys.executable).parent / "jobsctl"
Make = Callable[..., JobsDevice]


def _answered(dev: JobsDevice, suffix: str, tries: int = 20) -> dict[str, Any]:
    """Send until the (restarting) service answers; each try waits for its own reply."""
    for _ in range(tries):
        try:
            return dev.request(suffix, timeout=1)[1]
        except AssertionError:
            continue
    raise AssertionError(f"no answer to {suffix}")


def test_executions_versions_things_and_payloads_survive_a_stack_restart(
    tmp_path: Path, jobs_device: Make
) -> None:
    state = tmp_path / "state"
    first = Stack(state)
    first.start()
    try:
        dev = jobs_device(first)
        url = first.upload("fw/app.bin", b"firmware-bytes" * 100)
        doc = {"operation": "ota", "url": "${aws:iot:s3-presigned-url:" + url + "}"}
        first.iot_client().create_job(
            jobId="ota-1", targets=[f"{ARN}:thing/{dev.name}"], document=json.dumps(doc)
        )
        dev.request("start-next")
        _, reply = dev.request(
            "ota-1/update",
            {
                "status": "IN_PROGRESS",
                "statusDetails": {"receive": "3/7"},
                "includeJobExecutionState": True,
            },
        )
        assert reply["executionState"]["versionNumber"] == 3
        key = first.endpoints["aws_access_key_id"]
        dev.close()
    finally:
        first.stop()
    assert not (state / "endpoints.json").exists()

    second = Stack(state)
    second.start()
    try:
        assert second.endpoints["aws_access_key_id"] == key
        iot = second.iot_client()
        ex = iot.describe_job_execution(jobId="ota-1", thingName=dev.name)["execution"]
        assert ex["status"] == "IN_PROGRESS" and ex["versionNumber"] == 3
        assert ex["statusDetails"]["detailsMap"] == {"receive": "3/7"}
        assert iot.describe_thing(thingName=dev.name)["thingName"] == dev.name
        again = JobsDevice(
            dev.name,
            second.mqtt_port,
            str(state / "things" / dev.name / "device.pem"),
            str(state / "things" / dev.name / "device.key"),
            str(state / "things" / dev.name / "ca.pem"),
        )
        try:
            outcome, reply = again.request("ota-1/get")
            assert outcome == "accepted"
            execution = reply["execution"]
            assert execution["versionNumber"] == 3 and execution["statusDetails"] == {
                "receive": "3/7"
            }
            ctx = ssl.create_default_context(cafile=second.endpoints["ca_file"])
            with urllib.request.urlopen(execution["jobDocument"]["url"], context=ctx) as r:
                assert r.read() == b"firmware-bytes" * 100
            outcome, reply = again.request(
                "ota-1/update", {"status": "SUCCEEDED", "expectedVersion": 3}
            )
            assert outcome == "accepted"
        finally:
            again.close()
        assert iot.describe_job(jobId="ota-1")["job"]["status"] == "COMPLETED"
    finally:
        second.stop()


def test_data_plane_reconnects_after_a_broker_restart(stack: Stack, jobs_device: Make) -> None:
    dev = jobs_device(stack)
    job = unique("job")
    stack.iot_client().create_job(
        jobId=job, targets=[f"{ARN}:thing/{dev.name}"], document='{"operation": "x"}'
    )
    dev.close()
    stack.restart_broker()
    fresh = jobs_device(stack, dev.name)
    reply = _answered(fresh, "get")
    assert [j["jobId"] for j in reply["queuedJobs"]] == [job]


def test_restart_service_continues_from_sqlite(stack: Stack, jobs_device: Make) -> None:
    dev = jobs_device(stack)
    job = unique("job")
    stack.iot_client().create_job(
        jobId=job, targets=[f"{ARN}:thing/{dev.name}"], document='{"operation": "x"}'
    )
    dev.request("start-next")
    stack.restart_service()
    reply = _answered(dev, f"{job}/get")
    assert reply["execution"]["versionNumber"] == 2
    assert dev.request(f"{job}/update", {"status": "SUCCEEDED"})[0] == "accepted"


def test_cli_error_is_one_line_and_exit_code_1(stack_session: Stack) -> None:
    state = str(stack_session.state_dir)
    proc = subprocess.run(
        [str(JOBSCTL), "job", "describe", "--state-dir", state, "no-such-job"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "jobsctl: ResourceNotFoundException: Job no-such-job cannot be found.\n"


def test_cli_without_a_running_stack_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["job", "list", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jobsctl: ") and "jobsctl serve" in err
    assert main(["thing", "create", "--state-dir", str(tmp_path), "bad name!"]) == 1
    assert "invalid thing name" in capsys.readouterr().err


def test_cli_thing_create_while_serving_joins_continuous_jobs(
    stack_session: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    group, name = unique("cli-fleet"), unique("cli-dev")
    stack_session.create_thing(unique("seed"), group=group)
    iot = stack_session.iot_client()
    job = unique("cont")
    iot.create_job(
        jobId=job,
        targets=[f"{ARN}:thinggroup/{group}"],
        document='{"operation": "x"}',
        targetSelection="CONTINUOUS",
    )
    state = str(stack_session.state_dir)
    assert main(["thing", "create", "--state-dir", state, name, "--group", group]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["thing_name"] == name and out["mqtt_port"] == stack_session.mqtt_port
    assert Path(out["cert_file"]).exists() and Path(out["key_file"]).exists()
    assert (
        Path(out["ca_file"]).read_bytes() == Path(stack_session.endpoints["ca_file"]).read_bytes()
    )
    assert len(out["certificate_id"]) == 64
    summaries = iot.list_job_executions_for_thing(thingName=name)["executionSummaries"]
    assert [s["jobId"] for s in summaries] == [job]


def test_cli_thing_create_without_serve_writes_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["thing", "create", "--state-dir", str(tmp_path), "offline-1", "--group", "g"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["thing_arn"] == f"{ARN}:thing/offline-1" and "mqtt_port" not in out
    with Stack(tmp_path) as s:
        assert s.iot_client().describe_thing(thingName="offline-1")["thingName"] == "offline-1"


def test_thing_create_while_serve_runs_goes_through_the_running_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # One write path into the jobs database: with `jobsctl serve` running on the folder, the
    # command registers the thing, its group and its certificate through the control plane and
    # never opens jobs.sqlite3 itself.
    from botocore.exceptions import ClientError

    from jobsctl.service import store
    from jobsctl.stack import iot_client

    state = tmp_path / "served"
    with served(state) as endpoints:
        iot = iot_client(endpoints)
        iot.create_thing_group(thingGroupName="served")
        job = iot.create_job(
            jobId="cont",
            targets=[f"{ARN}:thinggroup/served"],
            document='{"operation": "x"}',
            targetSelection="CONTINUOUS",
        )["jobId"]

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("thing create opened the store around the running service")

        monkeypatch.setattr(store.Store, "__init__", refuse)
        for _ in range(2):  # and again: the same certificate, registered once
            argv = ["thing", "create", "--state-dir", str(state), "served-1", "--group", "served"]
            assert main(argv) == 0
            out = json.loads(capsys.readouterr().out)
            assert out["mqtt_port"] == endpoints["mqtt_port"]
        assert Path(out["cert_file"]).exists() and len(out["certificate_id"]) == 64
        assert iot.describe_thing(thingName="served-1")["thingName"] == "served-1"
        members = iot.list_things_in_thing_group(thingGroupName="served")["things"]
        assert members == ["served-1"]
        summaries = iot.list_job_executions_for_thing(thingName="served-1")["executionSummaries"]
        assert [s["jobId"] for s in summaries] == [job]
        # The service holds the certificate: a thing with one is not deleted.
        with pytest.raises(ClientError, match="attached principals"):
            iot.delete_thing(thingName="served-1")


def test_thing_create_without_serve_takes_the_state_dirs_lock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobsctl.statedir import StateDir

    with StateDir(tmp_path).lock():  # as a stack that is starting holds it
        assert main(["thing", "create", "--state-dir", str(tmp_path), "locked-1"]) == 1
    assert "a stack is starting" in capsys.readouterr().err
    assert not (tmp_path / "things" / "locked-1").exists()
    assert main(["thing", "create", "--state-dir", str(tmp_path), "locked-1"]) == 0


def test_serve_writes_endpoints_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "serve"
    with served(state) as endpoints:  # its pid in endpoints.json; SIGTERM: status 0
        for key in (
            "mqtt_host",
            "mqtt_port",
            "ca_file",
            "control_plane_url",
            "s3_url",
            "region",
            "account_id",
            "aws_access_key_id",
            "aws_secret_access_key",
        ):
            assert key in endpoints
    assert not (state / "endpoints.json").exists()
    for port in (endpoints["mqtt_port"], int(endpoints["s3_url"].rsplit(":", 1)[1])):
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


def test_a_second_stack_on_the_same_state_dir_is_refused(stack: Stack) -> None:
    with pytest.raises(JobsctlError, match="already running"):
        Stack(stack.state_dir).start()
    # the refused one did not disturb the running stack
    assert (stack.state_dir / "endpoints.json").exists()
    assert stack.iot_client().list_things()["things"] == []


def test_cli_job_create_resolves_thing_and_group_names_and_reads_a_document_file(
    stack_session: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    group, name, other = unique("cli-g"), unique("cli-t"), unique("cli-o")
    stack_session.create_thing(name, group=group)
    stack_session.create_thing(other)
    doc = tmp_path / "job.json"
    doc.write_text('{"operation": "reboot"}')
    state = str(stack_session.state_dir)
    job = unique("cli-job")
    argv = ["job", "create", "--state-dir", state, job, "--targets", group, other]
    argv += ["--document", str(doc), "--max-per-minute", "10", "--presigned-expires", "600"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["jobId"] == job
    assert main(["job", "describe", "--state-dir", state, job]) == 0
    described = json.loads(capsys.readouterr().out)["job"]
    assert described["targets"] == [f"{ARN}:thinggroup/{group}", f"{ARN}:thing/{other}"]
    assert described["presignedUrlConfig"] == {"expiresInSec": 600}
    assert described["jobExecutionsRolloutConfig"] == {"maximumPerMinute": 10}
    assert main(["job", "executions", "--state-dir", state, job]) == 0
    arns = {s["thingArn"] for s in json.loads(capsys.readouterr().out)["executionSummaries"]}
    assert arns == {f"{ARN}:thing/{name}", f"{ARN}:thing/{other}"}
    assert main(["job", "cancel", "--state-dir", state, job, "--comment", "enough"]) == 0
    capsys.readouterr()
    assert main(["job", "list", "--state-dir", state, "--status", "CANCELED"]) == 0
    assert job in [j["jobId"] for j in json.loads(capsys.readouterr().out)["jobs"]]
    bad = ["job", "create", "--state-dir", state, unique("j"), "--targets", name]
    assert main([*bad, "--document-json", "{oops"]) == 1
    assert "not valid JSON" in capsys.readouterr().err
