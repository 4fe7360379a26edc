"""The MQTT data plane, driven by a real MQTT client with a thing's certificate (REFERENCE §1)."""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from plugin_stack import JobsDevice, unique

from jobsctl.stack import Stack

ARN = "arn:aws:iot:us-east-1:123456789012"
Make = Callable[..., JobsDevice]


@pytest.fixture()
def dev(stack_session: Stack, jobs_device: Make) -> JobsDevice:
    return jobs_device(stack_session)


def _job(stack: Stack, *things: str, doc: dict[str, Any] | None = None, **kw: Any) -> str:
    job_id = unique("job")
    stack.iot_client().create_job(
        jobId=job_id,
        targets=[f"{ARN}:thing/{t}" for t in things],
        document=json.dumps(doc or {"operation": "reboot"}),
        **kw,
    )
    return job_id


def _now_ok(ts: Any) -> bool:
    return isinstance(ts, int) and abs(ts - time.time()) < 600


def test_get_lists_in_progress_and_queued_summaries_and_echoes_client_token(
    stack_session: Stack, dev: JobsDevice
) -> None:
    j1, j2 = _job(stack_session, dev.name), _job(stack_session, dev.name)
    dev.request("start-next")
    outcome, reply = dev.request("get", {"clientToken": "tok-1"})
    assert outcome == "accepted" and reply["clientToken"] == "tok-1"
    assert _now_ok(reply["timestamp"])
    assert [j["jobId"] for j in reply["inProgressJobs"]] == [j1]
    assert [j["jobId"] for j in reply["queuedJobs"]] == [j2]
    summary = reply["queuedJobs"][0]
    assert set(summary) == {
        "jobId",
        "queuedAt",
        "lastUpdatedAt",
        "versionNumber",
        "executionNumber",
    }
    assert set(reply["inProgressJobs"][0]) == set(summary) | {"startedAt"}


def test_start_next_starts_the_oldest_and_hands_out_a_fresh_presigned_url(
    stack_session: Stack, dev: JobsDevice
) -> None:
    payload = bytes(range(256)) * 40
    url = stack_session.upload(f"fw/{dev.name}.bin", payload)
    v2 = url.replace("s3.amazonaws.com", "s3.us-east-1.amazonaws.com")
    doc = {
        "operation": "ota",
        "url": "${aws:iot:s3-presigned-url:" + url + "}",
        "url2": "${aws:iot:s3-presigned-url-v2:" + v2 + "}",
    }
    job = _job(stack_session, dev.name, doc=doc, presignedUrlConfig={"expiresInSec": 120})
    outcome, reply = dev.request("start-next", {"statusDetails": {"step": "download"}})
    assert outcome == "accepted"
    ex = reply["execution"]
    assert ex["jobId"] == job and ex["thingName"] == dev.name and ex["status"] == "IN_PROGRESS"
    assert ex["versionNumber"] == 2 and ex["executionNumber"] == 1
    assert ex["statusDetails"] == {"step": "download"}
    assert {"queuedAt", "startedAt", "lastUpdatedAt"} <= set(ex)
    signed = ex["jobDocument"]["url"]
    assert signed.startswith(f"{stack_session.endpoints['s3_url']}/jobs-payloads/fw/")
    assert "X-Amz-Expires=120" in signed and "X-Amz-Signature=" in signed
    assert ex["jobDocument"]["url2"].startswith(stack_session.endpoints["s3_url"])
    ctx = ssl.create_default_context(cafile=stack_session.endpoints["ca_file"])
    with urllib.request.urlopen(signed, context=ctx, timeout=10) as r:
        assert r.read() == payload
    ranged = urllib.request.Request(signed, headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(ranged, context=ctx, timeout=10) as r:
        assert r.status == 206 and r.read() == payload[100:200]
    # a second hand-out is signed afresh (its own X-Amz-Date/Signature may differ by time only)
    _, again = dev.request(f"{job}/get")
    assert again["execution"]["jobDocument"]["url"].startswith(signed.split("?")[0])


def test_start_next_with_nothing_pending_is_accepted_without_execution(dev: JobsDevice) -> None:
    outcome, reply = dev.request("start-next")
    assert outcome == "accepted" and "execution" not in reply and _now_ok(reply["timestamp"])


def test_describe_by_id_and_next_and_without_document(
    stack_session: Stack, dev: JobsDevice
) -> None:
    job = _job(stack_session, dev.name)
    outcome, reply = dev.request("$next/get")
    assert outcome == "accepted" and reply["execution"]["jobId"] == job
    assert reply["execution"]["jobDocument"] == {"operation": "reboot"}
    _, reply = dev.request(f"{job}/get", {"includeJobDocument": False, "executionNumber": 1})
    assert reply["execution"]["status"] == "QUEUED" and "jobDocument" not in reply["execution"]
    outcome, reply = dev.request(f"{job}/get", {"executionNumber": 2})
    assert outcome == "rejected" and reply["code"] == "ResourceNotFound"
    outcome, reply = dev.request("no-such-job/get")
    assert outcome == "rejected" and reply["code"] == "ResourceNotFound"
    assert "executionState" not in reply and reply["clientToken"]


def test_describe_of_a_terminal_execution_is_terminal_state_reached(
    stack_session: Stack, dev: JobsDevice
) -> None:
    job = _job(stack_session, dev.name)
    assert dev.request(f"{job}/update", {"status": "SUCCEEDED"})[0] == "accepted"
    outcome, reply = dev.request(f"{job}/get")
    assert outcome == "rejected" and reply["code"] == "TerminalStateReached"
    _, reply = dev.request("$next/get")
    assert "execution" not in reply


def test_update_returns_state_and_document_when_asked_and_counts_versions(
    stack_session: Stack, dev: JobsDevice
) -> None:
    job = _job(stack_session, dev.name)
    dev.request("start-next")
    outcome, reply = dev.request(
        f"{job}/update",
        {
            "status": "IN_PROGRESS",
            "statusDetails": {"receive": "1/2"},
            "expectedVersion": 2,
            "includeJobExecutionState": True,
            "includeJobDocument": True,
        },
    )
    assert outcome == "accepted"
    assert reply["executionState"] == {
        "status": "IN_PROGRESS",
        "statusDetails": {"receive": "1/2"},
        "versionNumber": 3,
    }
    assert reply["jobDocument"] == {"operation": "reboot"}
    _, plain = dev.request(f"{job}/update", {"status": "SUCCEEDED", "executionNumber": 1})
    assert set(plain) == {"timestamp", "clientToken"}


def test_update_with_a_stale_expected_version_is_version_mismatch_with_state(
    stack_session: Stack, dev: JobsDevice
) -> None:
    job = _job(stack_session, dev.name)
    outcome, reply = dev.request(f"{job}/update", {"status": "IN_PROGRESS", "expectedVersion": 5})
    assert outcome == "rejected" and reply["code"] == "VersionMismatch"
    assert reply["executionState"] == {"status": "QUEUED", "statusDetails": {}, "versionNumber": 1}
    assert _now_ok(reply["timestamp"]) and reply["message"]


def test_update_of_a_terminal_execution_is_invalid_state_transition_with_state(
    stack_session: Stack, dev: JobsDevice
) -> None:
    job = _job(stack_session, dev.name)
    dev.request(f"{job}/update", {"status": "REJECTED", "statusDetails": {"reason": "bad"}})
    outcome, reply = dev.request(f"{job}/update", {"status": "IN_PROGRESS"})
    assert outcome == "rejected" and reply["code"] == "InvalidStateTransition"
    assert reply["executionState"]["status"] == "REJECTED"
    assert reply["executionState"]["statusDetails"] == {"reason": "bad"}


def test_update_after_the_job_was_canceled_is_refused(
    stack_session: Stack, dev: JobsDevice
) -> None:
    job = _job(stack_session, dev.name)
    dev.request("start-next")
    stack_session.iot_client().cancel_job(jobId=job, force=True)
    outcome, reply = dev.request(f"{job}/update", {"status": "IN_PROGRESS"})
    assert outcome == "rejected" and reply["code"] == "InvalidStateTransition"
    assert reply["executionState"]["status"] == "CANCELED"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"status": "TIMED_OUT"},
        {"status": "CANCELED"},
        {"status": "in_progress"},
        {"status": "IN_PROGRESS", "statusDetails": {"k" * 129: "v"}},
        {"status": "IN_PROGRESS", "statusDetails": {"bad key": "v"}},
        {"status": "IN_PROGRESS", "statusDetails": {"k": "v" * 1025}},
        {"status": "IN_PROGRESS", "statusDetails": {"k": ""}},
        {"status": "IN_PROGRESS", "statusDetails": {"k": "line\nbreak"}},
        {"status": "IN_PROGRESS", "statusDetails": {"k": 5}},
        {"status": "IN_PROGRESS", "statusDetails": "text"},
        {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 0},
        {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 10081},
        {"status": "IN_PROGRESS", "expectedVersion": "1"},
        {"status": "IN_PROGRESS", "includeJobDocument": "yes"},
        {"status": "IN_PROGRESS", "bogus": 1},
    ],
)
def test_invalid_update_requests_are_invalid_request(
    stack_session: Stack, dev: JobsDevice, body: dict[str, Any]
) -> None:
    job = _job(stack_session, dev.name)
    outcome, reply = dev.request(f"{job}/update", body)
    assert outcome == "rejected" and reply["code"] == "InvalidRequest", reply
    assert "executionState" not in reply


def test_status_details_at_their_limits_are_accepted(stack_session: Stack, dev: JobsDevice) -> None:
    job = _job(stack_session, dev.name)
    details = {"k" * 128: "v" * 1024, "a:b_c-d": "x"}
    outcome, reply = dev.request(
        f"{job}/update",
        {
            "status": "IN_PROGRESS",
            "statusDetails": details,
            "stepTimeoutInMinutes": 10080,
            "includeJobExecutionState": True,
        },
    )
    assert outcome == "accepted" and reply["executionState"]["statusDetails"] == details


def test_unknown_jobs_topic_is_invalid_topic(dev: JobsDevice) -> None:
    for suffix in ("bogus", "a/b/c", "job-1/delete"):
        since = dev.mark()
        dev.publish(suffix, json.dumps({"clientToken": "t"}))
        reply = dev.wait_for(suffix + "/rejected", since=since)
        assert reply["code"] == "InvalidTopic" and _now_ok(reply["timestamp"])


def test_malformed_json_is_invalid_json(dev: JobsDevice) -> None:
    since = dev.mark()
    dev.publish("get", b"{not json")
    assert dev.wait_for("get/rejected", since=since)["code"] == "InvalidJson"
    since = dev.mark()
    dev.publish("start-next", b"\xff\xfe")
    assert dev.wait_for("start-next/rejected", since=since)["code"] == "InvalidJson"


def test_update_of_next_is_invalid_request(dev: JobsDevice) -> None:
    outcome, reply = dev.request("$next/update", {"status": "IN_PROGRESS"})
    assert outcome == "rejected" and reply["code"] == "InvalidRequest"


def test_requests_beyond_the_per_thing_rate_are_throttled(
    stack_session: Stack, dev: JobsDevice, jobs_device: Make
) -> None:
    assert stack_session.service is not None
    data = stack_session.service.data
    data.throttle_per_second = 2.0
    try:
        outcomes = [dev.request("get")[1].get("code") for _ in range(6)]
        assert "RequestThrottled" in outcomes and outcomes[0] is None
        other = jobs_device(stack_session)
        assert other.request("get")[0] == "accepted"  # the rate is per thing
    finally:
        data.throttle_per_second = None


def test_injected_faults_reject_the_next_requests_with_the_right_shape(
    stack_session: Stack, dev: JobsDevice
) -> None:
    job = _job(stack_session, dev.name)
    stack_session.inject_fault(dev.name, "start-next", "InternalError")
    outcome, reply = dev.request("start-next")
    assert outcome == "rejected" and reply["code"] == "InternalError"
    assert "executionState" not in reply
    assert dev.request("start-next")[0] == "accepted"
    stack_session.inject_fault(dev.name, "update", "VersionMismatch", times=2)
    for _ in range(2):
        outcome, reply = dev.request(f"{job}/update", {"status": "SUCCEEDED"})
        assert reply["code"] == "VersionMismatch"
        assert reply["executionState"] == {
            "status": "IN_PROGRESS",
            "statusDetails": {},
            "versionNumber": 2,
        }
    assert dev.request(f"{job}/update", {"status": "SUCCEEDED"})[0] == "accepted"
    stack_session.inject_fault(dev.name, "get", "RequestThrottled")
    assert dev.request("get")[1]["code"] == "RequestThrottled"
    stack_session.inject_fault(dev.name, "describe", "ResourceNotFound")
    assert dev.request("$next/get")[1]["code"] == "ResourceNotFound"


def test_new_job_and_cancel_push_notify_and_notify_next(
    stack_session: Stack, dev: JobsDevice
) -> None:
    since = dev.mark()
    job = _job(stack_session, dev.name)
    nxt = dev.wait_for("notify-next", lambda b: "execution" in b, since=since)
    assert nxt["execution"]["jobId"] == job and nxt["execution"]["status"] == "QUEUED"
    assert nxt["execution"]["jobDocument"] == {"operation": "reboot"} and _now_ok(nxt["timestamp"])
    listing = dev.wait_for("notify", since=since)
    assert [j["jobId"] for j in listing["jobs"]["QUEUED"]] == [job]
    since = dev.mark()
    stack_session.iot_client().cancel_job(jobId=job)
    gone = dev.wait_for("notify-next", since=since)
    assert "execution" not in gone
    assert dev.wait_for("notify", since=since)["jobs"] == {}


def test_completion_moves_notify_next_to_the_following_job(
    stack_session: Stack, dev: JobsDevice
) -> None:
    j1, j2 = _job(stack_session, dev.name), _job(stack_session, dev.name)
    dev.request("start-next")
    since = dev.mark()
    dev.request(f"{j1}/update", {"status": "SUCCEEDED"})
    nxt = dev.wait_for("notify-next", lambda b: "execution" in b, since=since)
    assert nxt["execution"]["jobId"] == j2


def test_step_timeout_times_the_execution_out_and_notifies(
    stack_session: Stack, dev: JobsDevice
) -> None:
    job = _job(stack_session, dev.name)
    _, reply = dev.request("start-next", {"stepTimeoutInMinutes": 1})
    assert reply["execution"]["jobId"] == job
    since = dev.mark()
    stack_session.advance_clock(61)
    gone = dev.wait_for("notify-next", since=since)
    assert "execution" not in gone
    outcome, reply = dev.request(f"{job}/update", {"status": "SUCCEEDED"})
    assert outcome == "rejected" and reply["code"] == "InvalidStateTransition"
    assert reply["executionState"]["status"] == "TIMED_OUT"
    iot = stack_session.iot_client()
    assert iot.describe_job(jobId=job)["job"]["jobProcessDetails"]["numberOfTimedOutThings"] == 1
