"""schedulingConfig (start, end, endBehavior, maintenance windows) and exponential rollouts,
driven with boto3 against the service's controllable clock: time is moved, never waited for."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from plugin_stack import JobsDevice, unique

from jobsctl.stack import Stack, iot_client

ARN = "arn:aws:iot:us-east-1:123456789012"
DOC = json.dumps({"operation": "reboot"})


def _at(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M")


def _count(iot: Any, job_id: str, status: str | None = None) -> int:
    kw = {"status": status} if status else {}
    return len(iot.list_job_executions_for_job(jobId=job_id, **kw)["executionSummaries"])


def _refused(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as exc:
        call()
    assert exc.value.response["Error"]["Code"] == "InvalidRequestException"
    return str(exc.value.response["Error"]["Message"])


def _group(stack: Stack, n: int) -> tuple[str, list[str]]:
    group = unique("sched")
    names = [unique("s") for _ in range(n)]
    for name in names:
        stack.create_thing(name, group=group)
    return group, names


def test_scheduling_config_limits(stack_session: Stack) -> None:
    iot = iot_client(stack_session.endpoints, config=Config(parameter_validation=False))
    thing = unique("lim")
    stack_session.create_thing(thing)
    now = stack_session.model.now()

    def create(**sched: Any) -> Any:
        return iot.create_job(
            jobId=unique("job"),
            targets=[f"{ARN}:thing/{thing}"],
            document=DOC,
            schedulingConfig=sched,
        )

    create(startTime=_at(now + 31 * 60))
    create(startTime=_at(now + 40 * 60), endTime=_at(now + 71 * 60), endBehavior="CANCEL")
    assert "30 minutes from now" in _refused(lambda: create(startTime=_at(now + 28 * 60)))
    assert "a year" in _refused(lambda: create(startTime=_at(now + 370 * 86400)))
    assert "after startTime" in _refused(
        lambda: create(startTime=_at(now + 40 * 60), endTime=_at(now + 60 * 60))
    )
    assert "needs an endTime" in _refused(lambda: create(endBehavior="CANCEL"))
    assert "enum" in _refused(lambda: create(endTime=_at(now + 3600), endBehavior="LATER"))
    assert "YYYY-MM-DD" in _refused(lambda: create(startTime="next tuesday"))
    window = {"startTime": "cron(0 3 * * ? *)", "durationInMinutes": 1430}
    create(maintenanceWindows=[window])
    for bad in (0, 1431):
        w = {**window, "durationInMinutes": bad}
        _refused(lambda w=w: create(maintenanceWindows=[w]))  # type: ignore[misc]
    assert "cron" in _refused(
        lambda: create(maintenanceWindows=[{"startTime": "at 3", "durationInMinutes": 5}])
    )
    assert "out of range" in _refused(
        lambda: create(
            maintenanceWindows=[{"startTime": "cron(0 25 * * ? *)", "durationInMinutes": 5}]
        )
    )


def test_scheduled_job_starts_at_its_start_time(
    stack_session: Stack, jobs_device: Callable[..., JobsDevice]
) -> None:
    iot = stack_session.iot_client()
    dev = jobs_device(stack_session)
    start = stack_session.model.now() + 31 * 60
    job_id = unique("job")
    iot.create_job(
        jobId=job_id,
        targets=[f"{ARN}:thing/{dev.name}"],
        document=DOC,
        schedulingConfig={"startTime": _at(start)},
    )
    assert iot.describe_job(jobId=job_id)["job"]["status"] == "SCHEDULED"
    assert job_id in [j["jobId"] for j in iot.list_jobs(status="SCHEDULED")["jobs"]]
    assert _count(iot, job_id) == 0
    assert "execution" not in dev.request("start-next")[1]  # nothing for the device yet
    since = dev.mark()
    stack_session.advance_clock(start - stack_session.model.now() + 60)
    assert iot.describe_job(jobId=job_id)["job"]["status"] == "IN_PROGRESS"
    push = dev.wait_for("notify-next", lambda b: "execution" in b, since=since)
    assert push["execution"]["jobId"] == job_id


def test_maintenance_windows_gate_releases_and_end_behavior_cancels(stack: Stack) -> None:
    iot = stack.iot_client()
    group, names = _group(stack, 2)
    now = stack.model.now()
    opens = (int(now) // 60 + 120) * 60  # a whole minute two hours from now
    at = dt.datetime.fromtimestamp(opens, dt.UTC)
    window = {"startTime": f"cron({at.minute} {at.hour} * * ? *)", "durationInMinutes": 30}
    end = opens + 86400 + 3600  # the day after, an hour after the second window opened
    job_id = unique("job")
    iot.create_job(
        jobId=job_id,
        targets=[f"{ARN}:thinggroup/{group}"],
        document=DOC,
        targetSelection="CONTINUOUS",
        schedulingConfig={
            "maintenanceWindows": [window],
            "endTime": _at(end),
            "endBehavior": "CANCEL",
        },
    )
    job = iot.describe_job(jobId=job_id)["job"]
    assert job["status"] == "IN_PROGRESS" and job["schedulingConfig"]["maintenanceWindows"]
    assert job["scheduledJobRollouts"] == [{"startTime": _at(opens)}]
    assert _count(iot, job_id) == 0  # outside the window: nothing released
    stack.advance_clock(opens - now - 60)  # a minute before the window
    assert _count(iot, job_id) == 0
    stack.advance_clock(120)  # inside it
    assert _count(iot, job_id) == 2
    stack.advance_clock(30 * 60)  # the window closed
    late = unique("s")
    stack.create_thing(late, group=group)  # a continuous job's new member waits for a window
    assert _count(iot, job_id) == 2
    stack.advance_clock(86400 - 30 * 60)  # the next day's window
    assert _count(iot, job_id) == 3
    iot.cancel_job_execution(jobId=job_id, thingName=names[0])
    stack.advance_clock(3600)  # past endTime: endBehavior CANCEL
    job = iot.describe_job(jobId=job_id)["job"]
    assert job["status"] == "CANCELED"
    assert _count(iot, job_id, "CANCELED") == 3


def test_end_time_with_stop_rollout_releases_nothing_more(stack: Stack) -> None:
    iot = stack.iot_client()
    group, _ = _group(stack, 3)
    now = stack.model.now()
    job_id = unique("job")
    iot.create_job(
        jobId=job_id,
        targets=[f"{ARN}:thinggroup/{group}"],
        document=DOC,
        jobExecutionsRolloutConfig={"maximumPerMinute": 1},
        schedulingConfig={"endTime": _at(now + 31 * 60), "endBehavior": "STOP_ROLLOUT"},
    )
    assert _count(iot, job_id) == 1
    stack.advance_clock(61)
    assert _count(iot, job_id) == 2
    stack.advance_clock(40 * 60)  # past the end: the third is never released
    assert _count(iot, job_id) == 2
    assert iot.describe_job(jobId=job_id)["job"]["status"] == "IN_PROGRESS"


def test_exponential_rollout_raises_the_rate_with_successes(
    stack: Stack, jobs_device: Callable[..., JobsDevice]
) -> None:
    iot = stack.iot_client()
    group = unique("exp")
    devs = [jobs_device(stack, group=group) for _ in range(8)]
    job_id = unique("job")
    rollout = {
        "exponentialRate": {
            "baseRatePerMinute": 2,
            "incrementFactor": 2,
            "rateIncreaseCriteria": {"numberOfSucceededThings": 2},
        }
    }
    iot.create_job(
        jobId=job_id,
        targets=[f"{ARN}:thinggroup/{group}"],
        document=DOC,
        jobExecutionsRolloutConfig=rollout,
    )
    assert iot.describe_job(jobId=job_id)["job"]["jobExecutionsRolloutConfig"] == rollout

    def succeed_queued() -> None:
        for d in devs:
            ex = d.request("start-next")[1].get("execution")
            if ex:
                assert d.request(f"{job_id}/update", {"status": "SUCCEEDED"})[0] == "accepted"

    assert _count(iot, job_id) == 2  # base rate
    stack.advance_clock(61)
    assert _count(iot, job_id) == 4  # no success yet: still 2 a minute
    succeed_queued()  # 4 succeeded: two increments, 2 * 2 * 2 = 8 a minute
    stack.advance_clock(61)
    assert _count(iot, job_id) == 8


def test_exponential_rate_needs_a_criterion(stack_session: Stack) -> None:
    iot = stack_session.iot_client()
    thing = unique("exp")
    stack_session.create_thing(thing)
    rate = {"baseRatePerMinute": 1, "incrementFactor": 1.1, "rateIncreaseCriteria": {}}
    msg = _refused(
        lambda: iot.create_job(
            jobId=unique("job"),
            targets=[f"{ARN}:thing/{thing}"],
            document=DOC,
            jobExecutionsRolloutConfig={"exponentialRate": rate},
        )
    )
    assert "rateIncreaseCriteria" in msg
    rate["incrementFactor"] = 5.1
    rate["rateIncreaseCriteria"] = {"numberOfNotifiedThings": 1}
    assert "5" in _refused(
        lambda: iot.create_job(
            jobId=unique("job"),
            targets=[f"{ARN}:thing/{thing}"],
            document=DOC,
            jobExecutionsRolloutConfig={"exponentialRate": rate},
        )
    )


def test_jobsctl_job_create_takes_the_scheduling_flags(
    stack_session: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobsctl import cli

    thing = unique("cli")
    stack_session.create_thing(thing)
    now = stack_session.model.now()
    job_id = unique("cli")
    argv = [
        "job",
        "create",
        job_id,
        "--state-dir",
        str(stack_session.state_dir),
        "--targets",
        thing,
        "--document-json",
        DOC,
        "--start-time",
        _at(now + 40 * 60),
        "--end-time",
        _at(now + 90 * 60),
        "--end-behavior",
        "CANCEL",
        "--window",
        "cron(0 3 * * ? *)",
        "60",
    ]
    assert cli.main(argv) == 0
    job = stack_session.iot_client().describe_job(jobId=job_id)["job"]
    assert job["status"] == "SCHEDULED"  # no window before the end: it waits for the end
    sched = job["schedulingConfig"]
    assert sched == {
        "startTime": _at(now + 40 * 60),
        "endTime": _at(now + 90 * 60),
        "endBehavior": "CANCEL",
        "maintenanceWindows": [{"startTime": "cron(0 3 * * ? *)", "durationInMinutes": 60}],
    }
    capsys.readouterr()
    argv[2] = unique("cli")
    assert cli.main([*argv[:-1], "sixty"]) == 1
    assert "MINUTES must be a number" in capsys.readouterr().err
