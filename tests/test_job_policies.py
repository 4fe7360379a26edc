"""Job policies through boto3 and the MQTT data plane: timeouts at their limits, abortConfig,
jobExecutionsRetryConfig, and the validation that must match AWS IoT Jobs."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plugin_stack import JobsDevice, unique

from jobsctl.service.policies import ABORT_REASON
from jobsctl.stack import Stack, iot_client

ARN = "arn:aws:iot:us-east-1:123456789012"
DOC = json.dumps({"operation": "reboot"})


@pytest.fixture()
def iot(stack_session: Stack) -> Any:
    return stack_session.iot_client()


@pytest.fixture()
def raw_iot(stack_session: Stack) -> Any:
    return iot_client(stack_session.endpoints, config=Config(parameter_validation=False))


@pytest.fixture()
def thing(stack_session: Stack) -> str:
    name = unique("pol")
    stack_session.create_thing(name)
    return name


def _create(iot: Any, things: list[str], **kw: Any) -> str:
    job_id = unique("job")
    iot.create_job(jobId=job_id, targets=[f"{ARN}:thing/{t}" for t in things], document=DOC, **kw)
    return job_id


def _refused(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as exc:
        call()
    err = exc.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err["Error"]["Code"] == "InvalidRequestException"
    return str(err["Error"]["Message"])


def _status(iot: Any, job_id: str, thing: str, number: int | None = None) -> dict[str, Any]:
    kw = {"executionNumber": number} if number is not None else {}
    return dict(iot.describe_job_execution(jobId=job_id, thingName=thing, **kw)["execution"])


# ---------------------------------------------------------------- (4) validation at the limits


def test_in_progress_timeout_is_1_to_10080_minutes(raw_iot: Any, thing: str) -> None:
    for ok in (1, 10080):
        _create(raw_iot, [thing], timeoutConfig={"inProgressTimeoutInMinutes": ok})
    for bad in (0, -1, 10081):
        msg = _refused(
            lambda b=bad: _create(raw_iot, [thing], timeoutConfig={"inProgressTimeoutInMinutes": b})  # type: ignore[misc]
        )
        assert "inProgressTimeoutInMinutes" in msg and "10080" in msg


def test_step_timeout_is_1_to_10080_and_minus_1_cancels_the_timer_on_update(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    dev = jobs_device(stack_session)
    job_id = _create(iot, [dev.name])
    for bad in (0, 10081, -1):  # start-next knows no -1
        kind, reply = dev.request("start-next", {"stepTimeoutInMinutes": bad})
        assert kind == "rejected" and reply["code"] == "InvalidRequest"
        assert "stepTimeoutInMinutes" in reply["message"]
    kind, reply = dev.request("start-next", {"stepTimeoutInMinutes": 10080})
    assert kind == "accepted" and reply["execution"]["approximateSecondsBeforeTimedOut"] > 600000
    for bad in (0, 10081, -2):
        kind, reply = dev.request(
            f"{job_id}/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": bad}
        )
        assert kind == "rejected" and reply["code"] == "InvalidRequest"
    kind, _ = dev.request(f"{job_id}/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": 1})
    assert kind == "accepted"
    assert 0 < _status(iot, job_id, dev.name)["approximateSecondsBeforeTimedOut"] <= 60
    kind, _ = dev.request(f"{job_id}/update", {"status": "IN_PROGRESS", "stepTimeoutInMinutes": -1})
    assert kind == "accepted"
    assert "approximateSecondsBeforeTimedOut" not in _status(iot, job_id, dev.name)
    stack_session.advance_clock(120)  # past the canceled 1-minute step
    assert _status(iot, job_id, dev.name)["status"] == "IN_PROGRESS"


def test_list_jobs_filters_by_thing_group_id(stack_session: Stack, iot: Any) -> None:
    group = unique("gid")
    name = unique("gid-t")
    stack_session.create_thing(name, group=group)
    group_id = iot.describe_thing_group(thingGroupName=group)["thingGroupId"]
    job_id = unique("job")
    iot.create_job(jobId=job_id, targets=[f"{ARN}:thinggroup/{group}"], document=DOC)
    _create(iot, [name])  # targets the thing, not the group
    assert [j["jobId"] for j in iot.list_jobs(thingGroupId=group_id)["jobs"]] == [job_id]
    assert iot.list_jobs(thingGroupId="0000-no-such-group")["jobs"] == []


def test_delete_of_a_canceled_job_with_an_in_progress_execution_needs_no_force(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    dev = jobs_device(stack_session)
    job_id = _create(iot, [dev.name])
    assert dev.request("start-next")[1]["execution"]["status"] == "IN_PROGRESS"
    iot.cancel_job(jobId=job_id)  # not forced: the execution stays IN_PROGRESS
    assert _status(iot, job_id, dev.name)["status"] == "IN_PROGRESS"
    iot.delete_job(jobId=job_id)
    kind, reply = dev.request(f"{job_id}/update", {"status": "SUCCEEDED"})
    assert kind == "rejected" and reply["code"] == "ResourceNotFound"


def test_abort_and_retry_configs_are_checked_at_their_limits(raw_iot: Any, thing: str) -> None:
    def abort(pct: Any, executed: Any = 1, kind: str = "FAILED") -> dict[str, Any]:
        crit = {"failureType": kind, "action": "CANCEL", "thresholdPercentage": pct}
        return {"criteriaList": [{**crit, "minNumberOfExecutedThings": executed}]}

    for ok in (100, 0.01, 10.99):
        _create(raw_iot, [thing], abortConfig=abort(ok))
    assert "100" in _refused(lambda: _create(raw_iot, [thing], abortConfig=abort(100.01)))
    assert "two digits" in _refused(lambda: _create(raw_iot, [thing], abortConfig=abort(10.999)))
    assert "greater than or equal to 1" in _refused(
        lambda: _create(raw_iot, [thing], abortConfig=abort(50, 0))
    )
    assert "enum" in _refused(lambda: _create(raw_iot, [thing], abortConfig=abort(50, 1, "SLOW")))

    def retry(*criteria: tuple[str, int]) -> dict[str, Any]:
        return {"criteriaList": [{"failureType": t, "numberOfRetries": n} for t, n in criteria]}

    _create(raw_iot, [thing], jobExecutionsRetryConfig=retry(("ALL", 10)))
    _create(raw_iot, [thing], jobExecutionsRetryConfig=retry(("FAILED", 5), ("TIMED_OUT", 5)))
    _create(raw_iot, [thing], jobExecutionsRetryConfig=retry(("FAILED", 0)))
    assert "10" in _refused(
        lambda: _create(raw_iot, [thing], jobExecutionsRetryConfig=retry(("ALL", 11)))
    )
    assert "at most 10" in _refused(
        lambda: _create(
            raw_iot, [thing], jobExecutionsRetryConfig=retry(("FAILED", 6), ("TIMED_OUT", 5))
        )
    )
    assert "twice" in _refused(
        lambda: _create(
            raw_iot, [thing], jobExecutionsRetryConfig=retry(("FAILED", 1), ("FAILED", 1))
        )
    )
    assert "2" in _refused(
        lambda: _create(
            raw_iot,
            [thing],
            jobExecutionsRetryConfig=retry(("FAILED", 1), ("TIMED_OUT", 1), ("ALL", 1)),
        )
    )


# ---------------------------------------------------------------- (1) abort and retry


def test_abort_config_cancels_the_job_when_2_of_4_things_fail(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    devs = [jobs_device(stack_session) for _ in range(4)]
    criterion = {
        "failureType": "FAILED",
        "action": "CANCEL",
        "thresholdPercentage": 50,
        "minNumberOfExecutedThings": 4,
    }
    job_id = _create(iot, [d.name for d in devs], abortConfig={"criteriaList": [criterion]})
    assert iot.describe_job(jobId=job_id)["job"]["abortConfig"] == {"criteriaList": [criterion]}
    for d in devs[:2]:
        assert d.request("start-next")[1]["execution"]["jobId"] == job_id
    assert devs[0].request(f"{job_id}/update", {"status": "FAILED"})[0] == "accepted"
    assert iot.describe_job(jobId=job_id)["job"]["status"] == "IN_PROGRESS"  # 25 % < 50 %
    since = devs[2].mark()
    assert devs[1].request(f"{job_id}/update", {"status": "FAILED"})[0] == "accepted"
    job = iot.describe_job(jobId=job_id)["job"]
    assert job["status"] == "CANCELED" and job["reasonCode"] == ABORT_REASON
    assert "FAILED" in job["comment"]
    assert [_status(iot, job_id, d.name)["status"] for d in devs] == [
        "FAILED",
        "FAILED",
        "CANCELED",
        "CANCELED",
    ]
    devs[2].wait_for("notify-next", lambda b: "execution" not in b, since=since)
    assert job["jobProcessDetails"]["numberOfCanceledThings"] == 2


def test_abort_on_all_failure_types_counts_rejected_and_timed_out(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    devs = [jobs_device(stack_session) for _ in range(3)]
    criterion = {
        "failureType": "ALL",
        "action": "CANCEL",
        "thresholdPercentage": 60,
        "minNumberOfExecutedThings": 2,
    }
    job_id = _create(iot, [d.name for d in devs], abortConfig={"criteriaList": [criterion]})
    devs[0].request(f"{job_id}/update", {"status": "REJECTED"})
    assert iot.describe_job(jobId=job_id)["job"]["status"] == "IN_PROGRESS"  # 33 %
    devs[1].request("start-next", {"stepTimeoutInMinutes": 1})
    stack_session.advance_clock(61)
    assert _status(iot, job_id, devs[1].name)["status"] == "TIMED_OUT"  # 66 %
    assert iot.describe_job(jobId=job_id)["job"]["status"] == "CANCELED"
    assert _status(iot, job_id, devs[2].name)["status"] == "CANCELED"


def test_retry_requeues_a_failed_execution_with_execution_number_2(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    dev = jobs_device(stack_session)
    retry = {"criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]}
    job_id = _create(iot, [dev.name], jobExecutionsRetryConfig=retry)
    assert iot.describe_job(jobId=job_id)["job"]["jobExecutionsRetryConfig"] == retry
    first = dev.request("start-next")[1]["execution"]
    assert first["executionNumber"] == 1
    since = dev.mark()
    kind, reply = dev.request(
        f"{job_id}/update",
        {
            "status": "FAILED",
            "statusDetails": {"reason": "flaky"},
            "includeJobExecutionState": True,
        },
    )
    assert kind == "accepted" and reply["executionState"]["status"] == "FAILED"
    push = dev.wait_for("notify-next", lambda b: "execution" in b, since=since)
    assert push["execution"]["jobId"] == job_id and push["execution"]["executionNumber"] == 2
    again = _status(iot, job_id, dev.name)
    assert again["status"] == "QUEUED" and again["executionNumber"] == 2
    old = _status(iot, job_id, dev.name, 1)
    assert old["status"] == "FAILED" and old["statusDetails"]["detailsMap"] == {"reason": "flaky"}
    second = dev.request("start-next")[1]["execution"]
    assert second["executionNumber"] == 2 and second["versionNumber"] == 2
    assert iot.describe_job(jobId=job_id)["job"]["status"] == "IN_PROGRESS"
    dev.request(f"{job_id}/update", {"status": "FAILED"})  # the one retry is used up
    assert _status(iot, job_id, dev.name)["executionNumber"] == 2
    assert iot.describe_job(jobId=job_id)["job"]["status"] == "COMPLETED"


def test_retry_of_timed_out_only_leaves_a_failed_execution_failed(
    stack_session: Stack, iot: Any, jobs_device: Callable[..., JobsDevice]
) -> None:
    a, b = jobs_device(stack_session), jobs_device(stack_session)
    retry = {"criteriaList": [{"failureType": "TIMED_OUT", "numberOfRetries": 2}]}
    job_id = _create(iot, [a.name, b.name], jobExecutionsRetryConfig=retry)
    a.request(f"{job_id}/update", {"status": "FAILED"})
    assert _status(iot, job_id, a.name)["status"] == "FAILED"
    for number in (1, 2, 3):
        ex = b.request("start-next", {"stepTimeoutInMinutes": 1})[1]["execution"]
        assert ex["executionNumber"] == number
        stack_session.advance_clock(61)
    ex = _status(iot, job_id, b.name)
    assert ex["status"] == "TIMED_OUT" and ex["executionNumber"] == 3
    assert iot.describe_job(jobId=job_id)["job"]["status"] == "COMPLETED"


# ---------------------------------------------------------------- never a 500

_ANY = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_NUM = st.one_of(st.integers(-5, 20000), st.floats(allow_nan=False, allow_infinity=False), _ANY)
_TIME = st.one_of(
    st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9998, 1, 1)).map(
        lambda d: d.strftime("%Y-%m-%dT%H:%M")
    ),
    st.text(max_size=20),
    _ANY,
)
_CRON = st.one_of(
    st.lists(
        st.sampled_from(["*", "?", "0", "5-9", "*/15", "MON", "JAN", "61", "x", "1,2"]),
        min_size=4,
        max_size=7,
    ).map(lambda f: f"cron({' '.join(f)})"),
    st.text(max_size=20),
    _ANY,
)
_POLICIES = st.fixed_dictionaries(
    {},
    optional={
        "abortConfig": st.one_of(
            _ANY,
            st.fixed_dictionaries(
                {
                    "criteriaList": st.lists(
                        st.fixed_dictionaries(
                            {
                                "failureType": st.sampled_from(["FAILED", "ALL", "x"]),
                                "action": st.sampled_from(["CANCEL", "x"]),
                                "thresholdPercentage": _NUM,
                                "minNumberOfExecutedThings": _NUM,
                            }
                        ),
                        max_size=3,
                    )
                }
            ),
        ),
        "jobExecutionsRetryConfig": st.one_of(
            _ANY,
            st.fixed_dictionaries(
                {
                    "criteriaList": st.lists(
                        st.fixed_dictionaries(
                            {
                                "failureType": st.sampled_from(["FAILED", "TIMED_OUT", "ALL"]),
                                "numberOfRetries": _NUM,
                            }
                        ),
                        max_size=3,
                    )
                }
            ),
        ),
        "timeoutConfig": st.one_of(
            _ANY, st.fixed_dictionaries({"inProgressTimeoutInMinutes": _NUM})
        ),
        "schedulingConfig": st.one_of(
            _ANY,
            st.fixed_dictionaries(
                {},
                optional={
                    "startTime": _TIME,
                    "endTime": _TIME,
                    "endBehavior": st.sampled_from(["STOP_ROLLOUT", "CANCEL", "x"]),
                    "maintenanceWindows": st.lists(
                        st.fixed_dictionaries({"startTime": _CRON, "durationInMinutes": _NUM}),
                        max_size=2,
                    ),
                },
            ),
        ),
        "jobExecutionsRolloutConfig": st.one_of(
            _ANY,
            st.fixed_dictionaries(
                {
                    "exponentialRate": st.fixed_dictionaries(
                        {
                            "baseRatePerMinute": _NUM,
                            "incrementFactor": _NUM,
                            "rateIncreaseCriteria": st.one_of(
                                _ANY,
                                st.fixed_dictionaries(
                                    {}, optional={"numberOfNotifiedThings": _NUM}
                                ),
                            ),
                        }
                    )
                },
                optional={"maximumPerMinute": _NUM},
            ),
        ),
        "jobTemplateArn": st.one_of(
            _ANY,
            st.sampled_from(
                [
                    "arn:aws:iot:us-east-1::jobtemplate/AWS-Reboot:1.0",
                    "arn:aws:iot:us-east-1::jobtemplate/AWS-Nope:1.0",
                    "arn:aws:iot:us-east-1:123456789012:jobtemplate/none",
                    "arn:x",
                ]
            ),
        ),
        "documentParameters": _ANY,
    },
)


def test_fuzzed_job_policies_get_a_seed_error_or_200_never_a_500(stack: Stack) -> None:
    thing = unique("fz")
    stack.create_thing(thing)
    import urllib3
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    e = stack.endpoints
    signer = SigV4Auth(
        Credentials(e["aws_access_key_id"], e["aws_secret_access_key"]), "iot", e["region"]
    )
    http = urllib3.PoolManager(ca_certs=e["ca_file"], retries=False, timeout=30)
    seen: set[int] = set()

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(body=_POLICIES, with_doc=st.booleans())
    def one(body: dict[str, Any], with_doc: bool) -> None:
        body = {**body, "targets": [f"{ARN}:thing/{thing}"]}
        if with_doc:
            body["document"] = DOC
        data = json.dumps(body).encode()
        url = f"{e['control_plane_url']}/jobs/{unique('fz')}"
        request = AWSRequest(
            method="PUT", url=url, data=data, headers={"Content-Type": "application/json"}
        )
        signer.add_auth(request)
        r = http.request("PUT", url, body=data, headers=dict(request.headers.items()))
        seen.add(r.status)
        assert r.status in (200, 400, 404, 409, 410), (r.status, r.data[:300], body)
        if r.status != 200:
            assert json.loads(r.data)["message"]

    one()
    assert 400 in seen and 200 in seen
