"""The control plane, driven by boto3 exactly as an operator's tools drive AWS IoT."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import botocore
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from plugin_stack import JobsDevice, unique, wait_until

from jobsctl.stack import Stack, iot_client

ARN = "arn:aws:iot:us-east-1:123456789012"
DOC = json.dumps({"operation": "reboot"})


def _code(exc: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    return exc.value.response["ResponseMetadata"]["HTTPStatusCode"], exc.value.response["Error"][
        "Code"
    ]


@pytest.fixture()
def iot(stack_session: Stack) -> Any:
    return stack_session.iot_client()


@pytest.fixture()
def raw_iot(stack_session: Stack) -> Any:
    """A client without boto3's own parameter validation, to send what AWS must refuse."""
    return iot_client(stack_session.endpoints, config=Config(parameter_validation=False))


@pytest.fixture()
def thing(stack_session: Stack) -> str:
    name = unique("cp")
    stack_session.create_thing(name)
    return name


def _create(iot: Any, thing: str, **kw: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"jobId": unique("job"), "targets": [f"{ARN}:thing/{thing}"]}
    params["document"] = DOC
    params.update(kw)
    return dict(iot.create_job(**{k: v for k, v in params.items() if v is not None}))


def _invalid(call: Callable[[], Any], name: str = "InvalidRequestException") -> str:
    with pytest.raises(ClientError) as exc:
        call()
    status = {"InvalidRequestException": 400, "ResourceNotFoundException": 404}.get(name)
    got_status, got_name = _code(exc)
    assert got_name == name
    if status:
        assert got_status == status
    return str(exc.value.response["Error"]["Message"])


def test_create_job_returns_arn_and_describe_has_the_aws_shape(iot: Any, thing: str) -> None:
    out = _create(iot, thing, jobId="shape-" + thing, description="first")
    assert out["jobArn"] == f"{ARN}:job/shape-{thing}"
    assert out["jobId"] == "shape-" + thing and out["description"] == "first"
    job = iot.describe_job(jobId="shape-" + thing)["job"]
    assert job["status"] == "IN_PROGRESS" and job["targetSelection"] == "SNAPSHOT"
    assert job["targets"] == [f"{ARN}:thing/{thing}"]
    assert job["jobProcessDetails"]["numberOfQueuedThings"] == 1
    assert job["jobProcessDetails"]["numberOfSucceededThings"] == 0
    assert job["createdAt"].year >= 2024
    assert json.loads(iot.get_job_document(jobId="shape-" + thing)["document"]) == {
        "operation": "reboot"
    }
    execution = iot.describe_job_execution(jobId="shape-" + thing, thingName=thing)["execution"]
    assert execution["status"] == "QUEUED" and execution["versionNumber"] == 1
    assert execution["executionNumber"] == 1 and execution["thingArn"] == f"{ARN}:thing/{thing}"


def test_job_id_of_64_characters_is_accepted_and_65_refused(iot: Any, thing: str) -> None:
    base = unique("j").replace("-", "_")
    ok = (base + "x" * 64)[:64]
    assert _create(iot, thing, jobId=ok)["jobId"] == ok
    msg = _invalid(lambda: _create(iot, thing, jobId=(base + "y" * 65)[:65]))
    assert "jobId" in msg and "less than or equal to 64" in msg


def test_job_id_outside_the_pattern_is_refused(iot: Any, thing: str) -> None:
    msg = _invalid(lambda: _create(iot, thing, jobId="bad.id"))
    assert "pattern" in msg


def test_document_of_32768_characters_is_accepted_and_32769_refused(iot: Any, thing: str) -> None:
    def doc(n: int) -> str:
        text = json.dumps({"operation": "x", "pad": ""})
        return json.dumps({"operation": "x", "pad": "p" * (n - len(text))})

    assert len(doc(32768)) == 32768
    _create(iot, thing, document=doc(32768))
    msg = _invalid(lambda: _create(iot, thing, document=doc(32769)))
    assert "32768" in msg


def test_document_that_is_not_a_json_object_is_refused(iot: Any, thing: str) -> None:
    assert "JSON" in _invalid(lambda: _create(iot, thing, document="{not json"))
    assert "object" in _invalid(lambda: _create(iot, thing, document="[1, 2]"))


def test_description_of_2028_characters_is_accepted_and_2029_refused(iot: Any, thing: str) -> None:
    _create(iot, thing, description="d" * 2028)
    assert "2028" in _invalid(lambda: _create(iot, thing, description="d" * 2029))
    assert "pattern" in _invalid(lambda: _create(iot, thing, description="bell\x07"))


MANAGED = "arn:aws:iot:us-east-1::jobtemplate/AWS-Download-File:1.0"


def _params(**params: str) -> dict[str, Any]:
    """CreateJob arguments for the managed template with ``params`` (filePath filled in)."""
    return {
        "document": None,
        "jobTemplateArn": MANAGED,
        "documentParameters": {"filePath": "/f", **params},
    }


def test_document_parameters_follow_the_seed_limits(iot: Any, thing: str) -> None:
    job = _create(iot, thing, **_params(downloadUrl="v" * 1024))
    doc = json.loads(iot.get_job_document(jobId=job["jobId"])["document"])
    assert doc["url"] == "v" * 1024 and doc["path"] == "/f"
    assert "1024" in _invalid(lambda: _create(iot, thing, **_params(downloadUrl="v" * 1025)))
    _create(iot, thing, **_params(downloadUrl="u", **{"k" * 128: "v"}))
    assert "128" in _invalid(lambda: _create(iot, thing, **_params(**{"k" * 129: "v"})))
    assert "pattern" in _invalid(lambda: _create(iot, thing, **_params(**{"a b": "v"})))
    assert "pattern" in _invalid(lambda: _create(iot, thing, **_params(downloadUrl="\n")))


def test_document_parameters_keys_and_values_may_not_be_empty(raw_iot: Any, thing: str) -> None:
    assert "1" in _invalid(lambda: _create(raw_iot, thing, **_params(**{"": "v"})))
    assert "1" in _invalid(lambda: _create(raw_iot, thing, **_params(downloadUrl="")))


def test_document_parameters_need_a_managed_template(iot: Any, thing: str) -> None:
    doc = json.dumps({"url": "${aws:iot:parameter:u}"})
    msg = _invalid(lambda: _create(iot, thing, document=doc, documentParameters={"u": "x"}))
    assert "managed" in msg
    missing = _invalid(lambda: _create(iot, thing, document=None, jobTemplateArn=MANAGED))
    assert "documentParameters" in missing


def test_document_source_is_read_from_the_object_store(
    stack_session: Stack, iot: Any, thing: str
) -> None:
    url = stack_session.upload(f"docs/{thing}.json", b'{"operation": "from-s3"}')
    job = _create(iot, thing, document=None, documentSource=url)
    assert json.loads(iot.get_job_document(jobId=job["jobId"])["document"]) == {
        "operation": "from-s3"
    }
    assert iot.describe_job(jobId=job["jobId"])["documentSource"] == url


def test_document_source_of_1350_characters_is_checked_and_1351_refused(
    raw_iot: Any, thing: str
) -> None:
    base = "https://s3.amazonaws.com/jobs-payloads/"
    at_limit = base + "k" * (1350 - len(base))
    # 1350 passes the length check and fails only because no such object exists
    assert "no such object" in _invalid(
        lambda: _create(raw_iot, thing, document=None, documentSource=at_limit)
    )
    assert "1350" in _invalid(
        lambda: _create(raw_iot, thing, document=None, documentSource=at_limit + "k")
    )
    assert "greater than or equal to 1" in _invalid(
        lambda: _create(raw_iot, thing, document=None, documentSource="")
    )


def test_document_and_document_source_together_or_neither_are_refused(iot: Any, thing: str) -> None:
    _invalid(lambda: _create(iot, thing, documentSource="https://s3.amazonaws.com/b/k"))
    _invalid(lambda: _create(iot, thing, document=None))


def test_targets_are_required_and_must_be_arns_of_existing_things(raw_iot: Any, thing: str) -> None:
    assert "targets" in _invalid(lambda: _create(raw_iot, thing, targets=[]))
    assert "null" in _invalid(
        lambda: raw_iot.create_job(jobId=unique("j"), document=DOC)  # no targets at all
    )
    _invalid(lambda: _create(raw_iot, thing, targets=[thing]))
    _invalid(lambda: _create(raw_iot, thing, targets=[f"arn:aws:iot:eu-west-1:1:thing/{thing}"]))
    msg = _invalid(
        lambda: _create(raw_iot, thing, targets=[f"{ARN}:thing/nobody-here"]),
        "ResourceNotFoundException",
    )
    assert "nobody-here" in msg
    _invalid(
        lambda: _create(raw_iot, thing, targets=[f"{ARN}:thinggroup/no-group"]),
        "ResourceNotFoundException",
    )


def test_target_selection_and_rollout_and_presigned_config_limits(raw_iot: Any, thing: str) -> None:
    _create(raw_iot, thing, targetSelection="CONTINUOUS")
    assert "enum" in _invalid(lambda: _create(raw_iot, thing, targetSelection="SOMETIMES"))
    _create(raw_iot, thing, jobExecutionsRolloutConfig={"maximumPerMinute": 1})
    assert "greater than or equal to 1" in _invalid(
        lambda: _create(raw_iot, thing, jobExecutionsRolloutConfig={"maximumPerMinute": 0})
    )
    role = "arn:aws:iam::123456789012:role/r"
    assert len(role) >= 20
    for ok in (60, 3600):
        _create(raw_iot, thing, presignedUrlConfig={"roleArn": role, "expiresInSec": ok})
    for bad in (59, 3601):
        config = {"roleArn": role, "expiresInSec": bad}
        _invalid(lambda c=config: _create(raw_iot, thing, presignedUrlConfig=c))  # type: ignore[misc]
    _invalid(lambda: _create(raw_iot, thing, presignedUrlConfig={"roleArn": "a" * 19}))


def test_duplicate_job_id_is_a_409_resource_already_exists(iot: Any, thing: str) -> None:
    job = _create(iot, thing)
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException) as exc:
        _create(iot, thing, jobId=job["jobId"])
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409


def test_unsigned_request_is_refused_with_403(stack_session: Stack) -> None:
    e = stack_session.endpoints
    client = boto3.client(
        "iot",
        endpoint_url=e["control_plane_url"],
        region_name=e["region"],
        verify=e["ca_file"],
        config=Config(signature_version=botocore.UNSIGNED),
    )
    with pytest.raises(ClientError) as exc:
        client.list_things()
    assert _code(exc) == (403, "UnrecognizedClientException")


def test_wrong_secret_or_unknown_key_is_refused_with_403(stack_session: Stack) -> None:
    e = dict(stack_session.endpoints)
    wrong = iot_client({**e, "aws_secret_access_key": "x" * 40})
    with pytest.raises(ClientError) as exc:
        wrong.list_jobs()
    assert _code(exc) == (403, "InvalidSignatureException")
    stranger = iot_client({**e, "aws_access_key_id": "AKIAIOSFODNN7EXAMPLE"})
    with pytest.raises(ClientError) as exc:
        stranger.list_jobs()
    assert _code(exc) == (403, "UnrecognizedClientException")
    other_region = iot_client({**e, "region": "eu-west-1"})
    with pytest.raises(ClientError) as exc:
        other_region.list_jobs()
    assert _code(exc) == (403, "InvalidSignatureException")


def test_unknown_job_is_resource_not_found(iot: Any) -> None:
    for call in (
        lambda: iot.describe_job(jobId="no-such-job"),
        lambda: iot.get_job_document(jobId="no-such-job"),
        lambda: iot.cancel_job(jobId="no-such-job"),
        lambda: iot.delete_job(jobId="no-such-job"),
        lambda: iot.list_job_executions_for_job(jobId="no-such-job"),
    ):
        _invalid(call, "ResourceNotFoundException")


def test_cancel_job_cancels_queued_executions_and_keeps_in_progress_without_force(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    a, b = jobs_device(stack_session), jobs_device(stack_session)
    job = _create(iot, a.name, targets=[f"{ARN}:thing/{a.name}", f"{ARN}:thing/{b.name}"])
    assert a.request("start-next")[1]["execution"]["status"] == "IN_PROGRESS"
    out = iot.cancel_job(jobId=job["jobId"], comment="stop it", reasonCode="BAD_IMAGE_1")
    assert out["jobId"] == job["jobId"]
    desc = iot.describe_job(jobId=job["jobId"])["job"]
    assert desc["status"] == "CANCELED" and desc["comment"] == "stop it"
    assert desc["reasonCode"] == "BAD_IMAGE_1" and desc["forceCanceled"] is False
    ex_a = iot.describe_job_execution(jobId=job["jobId"], thingName=a.name)["execution"]
    ex_b = iot.describe_job_execution(jobId=job["jobId"], thingName=b.name)["execution"]
    assert ex_a["status"] == "IN_PROGRESS" and ex_b["status"] == "CANCELED"
    iot.cancel_job(jobId=job["jobId"], force=True)
    ex_a = iot.describe_job_execution(jobId=job["jobId"], thingName=a.name)["execution"]
    assert ex_a["status"] == "CANCELED" and ex_a["forceCanceled"] is True
    assert iot.describe_job(jobId=job["jobId"])["job"]["forceCanceled"] is True
    assert "pattern" in _invalid(lambda: iot.cancel_job(jobId=job["jobId"], reasonCode="lower"))


def test_delete_in_progress_job_needs_force_and_then_disappears(iot: Any, thing: str) -> None:
    job = _create(iot, thing)
    _invalid(lambda: iot.delete_job(jobId=job["jobId"]), "InvalidStateTransitionException")
    iot.delete_job(jobId=job["jobId"], force=True)

    def gone() -> bool:
        try:
            status = iot.describe_job(jobId=job["jobId"])["job"]["status"]
        except iot.exceptions.ResourceNotFoundException:
            return True
        assert status == "DELETION_IN_PROGRESS"
        return False

    wait_until(gone, what="the job to be deleted")
    assert not iot.list_job_executions_for_thing(thingName=thing)["executionSummaries"]


def test_cancel_job_execution_rules(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    dev = jobs_device(stack_session)
    j1, j2 = _create(iot, dev.name), _create(iot, dev.name)
    _invalid(
        lambda: iot.cancel_job_execution(jobId=j1["jobId"], thingName=dev.name, expectedVersion=7),
        "VersionConflictException",
    )
    assert dev.request("start-next")[1]["execution"]["jobId"] == j1["jobId"]
    _invalid(
        lambda: iot.cancel_job_execution(jobId=j1["jobId"], thingName=dev.name),
        "InvalidStateTransitionException",
    )
    iot.cancel_job_execution(
        jobId=j1["jobId"], thingName=dev.name, force=True, statusDetails={"why": "operator"}
    )
    ex = iot.describe_job_execution(jobId=j1["jobId"], thingName=dev.name)["execution"]
    assert ex["status"] == "CANCELED" and ex["statusDetails"]["detailsMap"] == {"why": "operator"}
    iot.cancel_job_execution(jobId=j2["jobId"], thingName=dev.name)
    _invalid(
        lambda: iot.cancel_job_execution(jobId=j2["jobId"], thingName=dev.name),
        "InvalidStateTransitionException",
    )
    # both executions are terminal: the SNAPSHOT jobs are complete
    assert iot.describe_job(jobId=j2["jobId"])["job"]["status"] == "COMPLETED"


def test_job_completes_when_every_execution_is_terminal_with_counts(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    a, b = jobs_device(stack_session), jobs_device(stack_session)
    job = _create(iot, a.name, targets=[f"{ARN}:thing/{a.name}", f"{ARN}:thing/{b.name}"])
    jid = job["jobId"]
    a.request("start-next")
    assert a.request(f"{jid}/update", {"status": "SUCCEEDED"})[0] == "accepted"
    assert iot.describe_job(jobId=jid)["job"]["status"] == "IN_PROGRESS"
    assert b.request(f"{jid}/update", {"status": "FAILED"})[0] == "accepted"
    desc = iot.describe_job(jobId=jid)["job"]
    assert desc["status"] == "COMPLETED" and "completedAt" in desc
    details = desc["jobProcessDetails"]
    assert details["numberOfSucceededThings"] == 1 and details["numberOfFailedThings"] == 1
    assert details["numberOfQueuedThings"] == 0


def test_things_groups_and_listings(stack_session: Stack, iot: Any) -> None:
    name, group = unique("lt"), unique("grp")
    out = iot.create_thing(thingName=name, attributePayload={"attributes": {"model": "esp32"}})
    assert out["thingArn"] == f"{ARN}:thing/{name}" and out["thingId"]
    assert iot.create_thing(thingName=name)["thingId"] == out["thingId"]
    desc = iot.describe_thing(thingName=name)
    assert desc["attributes"] == {"model": "esp32"} and desc["version"] == 1
    g = iot.create_thing_group(thingGroupName=group)
    assert g["thingGroupArn"] == f"{ARN}:thinggroup/{group}"
    iot.add_thing_to_thing_group(thingGroupName=group, thingName=name)
    _invalid(
        lambda: iot.add_thing_to_thing_group(thingGroupName="no-group", thingName=name),
        "ResourceNotFoundException",
    )
    _invalid(lambda: iot.describe_thing(thingName="no-thing"), "ResourceNotFoundException")
    names = [
        t["thingName"] for p in iot.get_paginator("list_things").paginate() for t in p["things"]
    ]
    assert name in names
    page = iot.list_things(maxResults=1)
    assert len(page["things"]) == 1 and "nextToken" in page
    assert "250" in _invalid(lambda: iot.list_things(maxResults=251))
    job = _create(iot, name, targets=[f"{ARN}:thinggroup/{group}"])
    listed = iot.list_jobs(thingGroupName=group)["jobs"]
    assert [j["jobId"] for j in listed] == [job["jobId"]]
    for_thing = iot.list_job_executions_for_thing(thingName=name)["executionSummaries"]
    assert for_thing[0]["jobId"] == job["jobId"]
    assert for_thing[0]["jobExecutionSummary"]["status"] == "QUEUED"


def test_continuous_job_reaches_a_thing_added_to_the_group_later_snapshot_does_not(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    group = unique("fleet")
    first = jobs_device(stack_session, group=group)
    cont = _create(
        iot, first.name, targets=[f"{ARN}:thinggroup/{group}"], targetSelection="CONTINUOUS"
    )
    snap = _create(iot, first.name, targets=[f"{ARN}:thinggroup/{group}"])
    late = jobs_device(stack_session)
    since = late.mark()
    iot.add_thing_to_thing_group(thingGroupName=group, thingName=late.name)
    push = late.wait_for("notify-next", lambda b: "execution" in b, since=since)
    assert push["execution"]["jobId"] == cont["jobId"]
    ids = [
        s["jobId"]
        for s in iot.list_job_executions_for_thing(thingName=late.name)["executionSummaries"]
    ]
    assert ids == [cont["jobId"]] and snap["jobId"] not in ids


def test_rollout_maximum_per_minute_holds_back_executions_until_their_minute(
    stack_session: Stack, iot: Any
) -> None:
    group = unique("roll")
    names = [unique("r") for _ in range(3)]
    for n in names:
        stack_session.create_thing(n, group=group)
    job = _create(
        iot,
        names[0],
        targets=[f"{ARN}:thinggroup/{group}"],
        jobExecutionsRolloutConfig={"maximumPerMinute": 2},
    )

    def queued() -> int:
        return len(iot.list_job_executions_for_job(jobId=job["jobId"])["executionSummaries"])

    assert queued() == 2
    stack_session.advance_clock(61)
    assert queued() == 3


def test_unsupported_job_features_are_refused_clearly(iot: Any, thing: str) -> None:
    msg = _invalid(
        lambda: _create(iot, thing, namespaceId="AWS"),
    )
    assert "namespaceId is not supported" in msg


def test_in_progress_timeout_of_the_job_times_executions_out(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    dev = jobs_device(stack_session)
    job = _create(iot, dev.name, timeoutConfig={"inProgressTimeoutInMinutes": 5})
    assert iot.describe_job(jobId=job["jobId"])["job"]["timeoutConfig"] == {
        "inProgressTimeoutInMinutes": 5
    }
    dev.request("start-next")
    ex = iot.describe_job_execution(jobId=job["jobId"], thingName=dev.name)["execution"]
    assert 0 < ex["approximateSecondsBeforeTimedOut"] <= 300
    # a step timer does not extend the job's own timeout
    dev.request(f"{job['jobId']}/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 60})
    stack_session.advance_clock(301)
    ex = iot.describe_job_execution(jobId=job["jobId"], thingName=dev.name)["execution"]
    assert ex["status"] == "TIMED_OUT"
