"""The control-plane operations beyond the core set, driven by boto3 and by aws-cli as an
operator's scripts drive AWS IoT: UpdateJob, AssociateTargetsWithJob, DeleteJobExecution, job
templates, RemoveThingFromThingGroup, ListThingsInThingGroup, ListThingGroups, DeleteThing,
TagResource/UntagResource/ListTagsForResource, DescribeEndpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from plugin_stack import JobsDevice, unique

from jobsctl.stack import Stack

ARN = "arn:aws:iot:us-east-1:123456789012"
DOC = json.dumps({"operation": "reboot"})
AWS = Path(sys.executable).parent / "aws"


@pytest.fixture()
def iot(stack_session: Stack) -> Any:
    return stack_session.iot_client()


def _error(call: Callable[[], Any]) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as exc:
        call()
    r = exc.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], r["Error"]["Message"]


def _thing(stack: Stack, group: str | None = None) -> str:
    return str(stack.create_thing(unique("op"), group=group)["thing_name"])


def _job(iot: Any, *things: str, **kw: Any) -> str:
    job_id = unique("job")
    iot.create_job(jobId=job_id, targets=[f"{ARN}:thing/{t}" for t in things], document=DOC, **kw)
    return job_id


def test_update_job_changes_its_settings(stack_session: Stack, iot: Any) -> None:
    job_id = _job(iot, _thing(stack_session))
    abort = {
        "criteriaList": [
            {
                "failureType": "ALL",
                "action": "CANCEL",
                "thresholdPercentage": 10,
                "minNumberOfExecutedThings": 3,
            }
        ]
    }
    iot.update_job(
        jobId=job_id,
        description="now with policies",
        abortConfig=abort,
        timeoutConfig={"inProgressTimeoutInMinutes": 20},
        jobExecutionsRolloutConfig={"maximumPerMinute": 7},
    )
    job = iot.describe_job(jobId=job_id)["job"]
    assert job["description"] == "now with policies" and job["abortConfig"] == abort
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 20}
    assert job["jobExecutionsRolloutConfig"] == {"maximumPerMinute": 7}
    status, code, msg = _error(
        lambda: iot.update_job(jobId=job_id, timeoutConfig={"inProgressTimeoutInMinutes": 0})
    )
    assert (status, code) == (400, "InvalidRequestException") and "10080" in msg
    assert _error(lambda: iot.update_job(jobId="no-such-job", description="x"))[1] == (
        "ResourceNotFoundException"
    )


def test_update_job_with_abort_criteria_already_met_cancels_the_job(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    a, b = jobs_device(stack_session), jobs_device(stack_session)
    job_id = _job(iot, a.name, b.name)
    a.request(f"{job_id}/update", {"status": "FAILED"})
    criterion = {
        "failureType": "FAILED",
        "action": "CANCEL",
        "thresholdPercentage": 50,
        "minNumberOfExecutedThings": 2,
    }
    iot.update_job(jobId=job_id, abortConfig={"criteriaList": [criterion]})
    job = iot.describe_job(jobId=job_id)["job"]
    assert job["status"] == "CANCELED" and job["reasonCode"] == "ABORT_CRITERIA_MET"
    status = iot.describe_job_execution(jobId=job_id, thingName=b.name)["execution"]["status"]
    assert status == "CANCELED"


def test_associate_targets_adds_things_to_a_continuous_job_only(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    first = _thing(stack_session)
    late = jobs_device(stack_session)
    job_id = _job(iot, first, targetSelection="CONTINUOUS")
    since = late.mark()
    out = iot.associate_targets_with_job(
        jobId=job_id, targets=[f"{ARN}:thing/{late.name}"], comment="one more"
    )
    assert out["jobId"] == job_id and out["jobArn"] == f"{ARN}:job/{job_id}"
    push = late.wait_for("notify-next", lambda b: "execution" in b, since=since)
    assert push["execution"]["jobId"] == job_id
    assert f"{ARN}:thing/{late.name}" in iot.describe_job(jobId=job_id)["job"]["targets"]
    snapshot = _job(iot, first)
    status, code, msg = _error(
        lambda: iot.associate_targets_with_job(jobId=snapshot, targets=[f"{ARN}:thing/{first}"])
    )
    assert (status, code) == (400, "InvalidRequestException") and "CONTINUOUS" in msg


def test_associate_targets_stops_at_100_targets(stack_session: Stack, iot: Any) -> None:
    group = unique("many")
    groups = [f"{group}-{i}" for i in range(100)]
    for g in groups:
        iot.create_thing_group(thingGroupName=g)
    job_id = unique("job")
    iot.create_job(
        jobId=job_id,
        targets=[f"{ARN}:thinggroup/{g}" for g in groups[:99]],
        document=DOC,
        targetSelection="CONTINUOUS",
    )
    iot.associate_targets_with_job(jobId=job_id, targets=[f"{ARN}:thinggroup/{groups[99]}"])
    extra = unique("extra")
    iot.create_thing_group(thingGroupName=extra)
    status, code, msg = _error(
        lambda: iot.associate_targets_with_job(jobId=job_id, targets=[f"{ARN}:thinggroup/{extra}"])
    )
    assert (status, code) == (410, "LimitExceededException") and "100" in msg


def test_delete_job_execution_needs_a_terminal_execution_or_force(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    dev = jobs_device(stack_session)
    retry = {"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]}
    job_id = _job(iot, dev.name, jobExecutionsRetryConfig=retry)
    status, code, _ = _error(
        lambda: iot.delete_job_execution(jobId=job_id, thingName=dev.name, executionNumber=1)
    )
    assert (status, code) == (409, "InvalidStateTransitionException")
    dev.request("start-next")
    dev.request(f"{job_id}/update", {"status": "FAILED"})  # attempt 1 kept, number 2 queued
    iot.delete_job_execution(jobId=job_id, thingName=dev.name, executionNumber=1)
    assert _error(
        lambda: iot.describe_job_execution(jobId=job_id, thingName=dev.name, executionNumber=1)
    )[1] == ("ResourceNotFoundException")
    dev.request("start-next")
    iot.delete_job_execution(jobId=job_id, thingName=dev.name, executionNumber=2, force=True)
    kind, reply = dev.request(f"{job_id}/update", {"status": "SUCCEEDED"})
    assert kind == "rejected" and reply["code"] == "ResourceNotFound"
    assert _error(
        lambda: iot.delete_job_execution(jobId=job_id, thingName=dev.name, executionNumber=9)
    )[1] == ("ResourceNotFoundException")


def test_job_templates_resolve_into_jobs(stack_session: Stack, iot: Any) -> None:
    thing = _thing(stack_session)
    template = unique("tmpl")
    retry = {"criteriaList": [{"failureType": "ALL", "numberOfRetries": 2}]}
    out = iot.create_job_template(
        jobTemplateId=template,
        description="reboot the fleet",
        document=DOC,
        timeoutConfig={"inProgressTimeoutInMinutes": 30},
        jobExecutionsRetryConfig=retry,
        tags=[{"Key": "team", "Value": "fw"}],
    )
    assert out["jobTemplateArn"] == f"{ARN}:jobtemplate/{template}"
    described = iot.describe_job_template(jobTemplateId=template)
    assert described["description"] == "reboot the fleet" and described["document"] == DOC
    assert described["jobExecutionsRetryConfig"] == retry
    listed = [t["jobTemplateId"] for t in iot.list_job_templates()["jobTemplates"]]
    assert template in listed
    job_id = unique("job")
    iot.create_job(
        jobId=job_id,
        targets=[f"{ARN}:thing/{thing}"],
        jobTemplateArn=out["jobTemplateArn"],
        timeoutConfig={"inProgressTimeoutInMinutes": 5},  # the request wins over the template
    )
    job = iot.describe_job(jobId=job_id)["job"]
    assert job["jobTemplateArn"] == out["jobTemplateArn"]
    assert job["jobExecutionsRetryConfig"] == retry
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 5}
    assert iot.get_job_document(jobId=job_id)["document"] == DOC
    copy = unique("tmpl")
    iot.create_job_template(jobTemplateId=copy, description="copy", jobArn=job["jobArn"])
    assert iot.describe_job_template(jobTemplateId=copy)["timeoutConfig"] == {
        "inProgressTimeoutInMinutes": 5
    }
    status, code, _ = _error(
        lambda: iot.create_job_template(jobTemplateId=template, description="again", document=DOC)
    )
    assert (status, code) == (409, "ConflictException")
    msg = _error(
        lambda: iot.create_job(
            jobId=unique("job"),
            targets=[f"{ARN}:thing/{thing}"],
            jobTemplateArn=out["jobTemplateArn"],
            documentParameters={"a": "b"},
        )
    )[2]
    assert "managed" in msg
    iot.delete_job_template(jobTemplateId=template)
    assert _error(lambda: iot.describe_job_template(jobTemplateId=template))[1] == (
        "ResourceNotFoundException"
    )
    managed = iot.describe_managed_job_template(templateName="AWS-Download-File")
    assert [p["key"] for p in managed["documentParameters"]] == ["downloadUrl", "filePath"]
    names = [t["templateName"] for t in iot.list_managed_job_templates()["managedJobTemplates"]]
    assert "AWS-Download-File" in names


def test_groups_membership_listing_and_removal(stack_session: Stack, iot: Any) -> None:
    group = unique("grp")
    a, b = _thing(stack_session, group), _thing(stack_session, group)
    assert sorted(iot.list_things_in_thing_group(thingGroupName=group)["things"]) == sorted([a, b])
    page = iot.list_things_in_thing_group(thingGroupName=group, maxResults=1)
    assert len(page["things"]) == 1 and "nextToken" in page
    iot.remove_thing_from_thing_group(thingGroupName=group, thingName=a)
    assert iot.list_things_in_thing_group(thingGroupName=group)["things"] == [b]
    iot.remove_thing_from_thing_group(
        thingGroupArn=f"{ARN}:thinggroup/{group}", thingArn=f"{ARN}:thing/{b}"
    )
    assert iot.list_things_in_thing_group(thingGroupName=group)["things"] == []
    groups = iot.list_thing_groups(namePrefixFilter=group)["thingGroups"]
    assert groups == [{"groupName": group, "groupArn": f"{ARN}:thinggroup/{group}"}]
    assert _error(lambda: iot.list_things_in_thing_group(thingGroupName="no-group"))[1] == (
        "ResourceNotFoundException"
    )


def test_delete_thing_rules(stack_session: Stack, iot: Any) -> None:
    bare = unique("bare")
    iot.create_thing(thingName=bare)
    status, code, _ = _error(lambda: iot.delete_thing(thingName=bare, expectedVersion=5))
    assert (status, code) == (409, "VersionConflictException")
    iot.delete_thing(thingName=bare, expectedVersion=1)
    assert _error(lambda: iot.describe_thing(thingName=bare))[1] == "ResourceNotFoundException"
    iot.delete_thing(thingName=bare)  # gone already: no error, as on AWS
    provisioned = _thing(stack_session)  # has its certificate
    status, code, msg = _error(lambda: iot.delete_thing(thingName=provisioned))
    assert (status, code) == (400, "InvalidRequestException") and "principal" in msg


def test_tags_on_jobs_things_and_templates(stack_session: Stack, iot: Any) -> None:
    thing = _thing(stack_session)
    job_id = _job(iot, thing, tags=[{"Key": "rollout", "Value": "canary"}])
    job_arn = f"{ARN}:job/{job_id}"
    assert iot.list_tags_for_resource(resourceArn=job_arn)["tags"] == [
        {"Key": "rollout", "Value": "canary"}
    ]
    iot.tag_resource(resourceArn=job_arn, tags=[{"Key": "owner", "Value": "ops"}])
    iot.untag_resource(resourceArn=job_arn, tagKeys=["rollout"])
    assert iot.list_tags_for_resource(resourceArn=job_arn)["tags"] == [
        {"Key": "owner", "Value": "ops"}
    ]
    thing_arn = f"{ARN}:thing/{thing}"
    iot.tag_resource(resourceArn=thing_arn, tags=[{"Key": f"k{i}", "Value": ""} for i in range(50)])
    status, code, msg = _error(
        lambda: iot.tag_resource(resourceArn=thing_arn, tags=[{"Key": "k50", "Value": ""}])
    )
    assert (status, code) == (410, "LimitExceededException") and "50" in msg
    assert _error(lambda: iot.list_tags_for_resource(resourceArn=f"{ARN}:job/nope"))[1] == (
        "ResourceNotFoundException"
    )


def test_describe_endpoint_names_the_local_stack(stack_session: Stack, iot: Any) -> None:
    ats = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    assert ats == f"localhost:{stack_session.mqtt_port}"
    status, code, msg = _error(lambda: iot.describe_endpoint(endpointType="iot:Nothing"))
    assert (status, code) == (400, "InvalidRequestException") and "iot:Nothing" in msg


def _aws(stack: Stack, *args: str, service: str = "iot", url_key: str = "control_plane_url") -> Any:
    """aws-cli against the local stack (``service``: iot or iot-jobs-data)."""
    e = stack.endpoints
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": e["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": e["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": e["region"],
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    cmd = [str(AWS), "--endpoint-url", e[url_key], "--ca-bundle", e["ca_file"]]
    proc = subprocess.run(
        [*cmd, "--output", "json", service, *args], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def test_aws_cli_drives_every_added_operation(stack_session: Stack, iot: Any) -> None:
    s = stack_session
    group = unique("cli-grp")
    thing = _thing(s, group)
    bare = unique("cli-bare")
    iot.create_thing(thingName=bare)
    template = unique("cli-tmpl")
    out = _aws(
        s,
        "create-job-template",
        "--job-template-id",
        template,
        "--description",
        "from the cli",
        "--document",
        DOC,
    )
    t_arn = out["jobTemplateArn"]
    assert _aws(s, "describe-job-template", "--job-template-id", template)["document"] == DOC
    listed = _aws(s, "list-job-templates")["jobTemplates"]
    assert template in [t["jobTemplateId"] for t in listed]
    job_id = unique("cli-job")
    _aws(
        s,
        "create-job",
        "--job-id",
        job_id,
        "--targets",
        f"{ARN}:thinggroup/{group}",
        "--job-template-arn",
        t_arn,
        "--target-selection",
        "CONTINUOUS",
    )
    _aws(s, "update-job", "--job-id", job_id, "--description", "updated by the cli")
    assert iot.describe_job(jobId=job_id)["job"]["description"] == "updated by the cli"
    other = _thing(s)
    out = _aws(
        s, "associate-targets-with-job", "--job-id", job_id, "--targets", f"{ARN}:thing/{other}"
    )
    assert out["jobId"] == job_id
    iot.cancel_job_execution(jobId=job_id, thingName=other)
    _aws(
        s,
        "delete-job-execution",
        "--job-id",
        job_id,
        "--thing-name",
        other,
        "--execution-number",
        "1",
    )
    assert [
        s_["thingArn"] for s_ in iot.list_job_executions_for_job(jobId=job_id)["executionSummaries"]
    ] == [f"{ARN}:thing/{thing}"]
    assert _aws(s, "list-things-in-thing-group", "--thing-group-name", group)["things"] == [thing]
    _aws(s, "remove-thing-from-thing-group", "--thing-group-name", group, "--thing-name", thing)
    assert _aws(s, "list-things-in-thing-group", "--thing-group-name", group)["things"] == []
    groups = _aws(s, "list-thing-groups", "--name-prefix-filter", group)["thingGroups"]
    assert [g["groupName"] for g in groups] == [group]
    _aws(s, "delete-thing", "--thing-name", bare)
    assert bare not in [t["thingName"] for t in iot.list_things()["things"]]
    j_arn = f"{ARN}:job/{job_id}"
    _aws(s, "tag-resource", "--resource-arn", j_arn, "--tags", "Key=stage,Value=cli")
    tags = _aws(s, "list-tags-for-resource", "--resource-arn", j_arn)["tags"]
    assert tags == [{"Key": "stage", "Value": "cli"}]
    _aws(s, "untag-resource", "--resource-arn", j_arn, "--tag-keys", "stage")
    assert _aws(s, "list-tags-for-resource", "--resource-arn", j_arn)["tags"] == []
    endpoint = _aws(s, "describe-endpoint", "--endpoint-type", "iot:Data-ATS")
    assert endpoint["endpointAddress"] == f"localhost:{s.mqtt_port}"
    _aws(s, "delete-job-template", "--job-template-id", template)
    assert template not in [t["jobTemplateId"] for t in iot.list_job_templates()["jobTemplates"]]
    managed = _aws(s, "list-managed-job-templates")["managedJobTemplates"]
    assert "AWS-Reboot" in [t["templateName"] for t in managed]
    reboot = _aws(s, "describe-managed-job-template", "--template-name", "AWS-Reboot")
    assert json.loads(reboot["document"]) == {"operation": "reboot"}


def test_aws_cli_drives_the_iot_jobs_data_api(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    s = stack_session
    dev = jobs_device(s)
    job_id = _job(iot, dev.name)

    def data(*args: str) -> Any:
        return _aws(s, *args, service="iot-jobs-data", url_key="jobs_data_url")

    pending = data("get-pending-job-executions", "--thing-name", dev.name)
    assert [j["jobId"] for j in pending["queuedJobs"]] == [job_id]
    started = data(
        "start-next-pending-job-execution",
        "--thing-name",
        dev.name,
        "--step-timeout-in-minutes",
        "5",
    )["execution"]
    assert started["jobId"] == job_id and started["status"] == "IN_PROGRESS"
    described = data("describe-job-execution", "--thing-name", dev.name, "--job-id", job_id)
    assert described["execution"]["versionNumber"] == started["versionNumber"]
    out = data(
        "update-job-execution",
        "--thing-name",
        dev.name,
        "--job-id",
        job_id,
        "--status",
        "SUCCEEDED",
        "--include-job-execution-state",
    )
    assert out["executionState"]["status"] == "SUCCEEDED"
    kind, reply = dev.request(f"{job_id}/get")  # the MQTT view agrees
    assert kind == "rejected" and reply["code"] == "TerminalStateReached"
