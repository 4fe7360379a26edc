"""The iot-jobs-data HTTPS API (boto3.client("iot-jobs-data")), SigV4 with its own signing
name, over the same model as the MQTT data plane: what one view changes, the other sees."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from plugin_stack import JobsDevice, unique

from jobsctl.stack import Stack, iot_client

ARN = "arn:aws:iot:us-east-1:123456789012"
DOC = {"operation": "reboot", "n": 1}


@pytest.fixture()
def jobs(stack_session: Stack) -> Any:
    return stack_session.jobs_data_client()


def _error(call: Callable[[], Any]) -> tuple[int, str]:
    with pytest.raises(ClientError) as exc:
        call()
    r = exc.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"]


def _job(stack: Stack, thing: str) -> str:
    job_id = unique("hjob")
    stack.iot_client().create_job(
        jobId=job_id, targets=[f"{ARN}:thing/{thing}"], document=json.dumps(DOC)
    )
    return job_id


def test_https_and_mqtt_views_of_an_execution_agree(
    stack_session: Stack, jobs: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    dev = jobs_device(stack_session)
    job_id = _job(stack_session, dev.name)
    pending = jobs.get_pending_job_executions(thingName=dev.name)
    assert [j["jobId"] for j in pending["queuedJobs"]] == [job_id]
    assert pending["inProgressJobs"] == []
    since = dev.mark()
    started = jobs.start_next_pending_job_execution(
        thingName=dev.name, statusDetails={"step": "http"}, stepTimeoutInMinutes=10
    )["execution"]
    assert started["jobId"] == job_id and started["status"] == "IN_PROGRESS"
    assert json.loads(started["jobDocument"]) == DOC  # a string in the HTTP API
    assert 0 < started["approximateSecondsBeforeTimedOut"] <= 600
    dev.wait_for("notify", lambda b: "IN_PROGRESS" in b.get("jobs", {}), since=since)
    kind, mqtt = dev.request(f"{job_id}/get")
    assert kind == "accepted"
    assert mqtt["execution"]["versionNumber"] == started["versionNumber"]
    assert mqtt["execution"]["statusDetails"] == {"step": "http"}
    dev.request(f"{job_id}/update", {"status": "IN_PROGRESS", "statusDetails": {"step": "mqtt"}})
    seen = jobs.describe_job_execution(thingName=dev.name, jobId=job_id)["execution"]
    assert seen["statusDetails"] == {"step": "mqtt"} and seen["versionNumber"] == 3
    assert (
        jobs.describe_job_execution(thingName=dev.name, jobId="$next")["execution"]["jobId"]
        == job_id
    )
    since = dev.mark()
    out = jobs.update_job_execution(
        thingName=dev.name,
        jobId=job_id,
        status="SUCCEEDED",
        expectedVersion=3,
        includeJobExecutionState=True,
        includeJobDocument=True,
    )
    assert out["executionState"]["status"] == "SUCCEEDED"
    assert json.loads(out["jobDocument"]) == DOC
    dev.wait_for("notify-next", lambda b: "execution" not in b, since=since)
    kind, reply = dev.request(f"{job_id}/get")
    assert kind == "rejected" and reply["code"] == "TerminalStateReached"
    control = stack_session.iot_client().describe_job_execution(jobId=job_id, thingName=dev.name)
    assert control["execution"]["status"] == "SUCCEEDED"


def test_https_errors_map_to_the_api_exceptions(
    stack_session: Stack, jobs: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    dev = jobs_device(stack_session)
    job_id = _job(stack_session, dev.name)
    assert _error(lambda: jobs.get_pending_job_executions(thingName="nobody-here")) == (
        404,
        "ResourceNotFoundException",
    )
    assert _error(
        lambda: jobs.start_next_pending_job_execution(thingName=dev.name, stepTimeoutInMinutes=0)
    ) == (400, "InvalidRequestException")
    jobs.start_next_pending_job_execution(thingName=dev.name)
    assert _error(
        lambda: jobs.update_job_execution(
            thingName=dev.name, jobId=job_id, status="SUCCEEDED", expectedVersion=9
        )
    ) == (409, "InvalidStateTransitionException")
    assert _error(
        lambda: jobs.update_job_execution(thingName=dev.name, jobId=job_id, status="QUEUED")
    ) == (400, "InvalidRequestException")
    jobs.update_job_execution(thingName=dev.name, jobId=job_id, status="FAILED")
    assert _error(lambda: jobs.describe_job_execution(thingName=dev.name, jobId=job_id)) == (
        410,
        "TerminalStateException",
    )
    assert _error(lambda: jobs.describe_job_execution(thingName=dev.name, jobId="nope")) == (
        404,
        "ResourceNotFoundException",
    )


def test_https_api_wants_its_own_signing_name(stack_session: Stack) -> None:
    e = stack_session.endpoints
    wrong = iot_client({**e, "control_plane_url": e["jobs_data_url"]})  # signed for "iot"
    with pytest.raises(ClientError) as exc:
        wrong.list_things()
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "iot-jobs-data" in exc.value.response["Error"]["Message"]
    iot = stack_session.iot_client()
    address = iot.describe_endpoint(endpointType="iot:Jobs")["endpointAddress"]
    assert e["jobs_data_url"] == f"https://{address}"
