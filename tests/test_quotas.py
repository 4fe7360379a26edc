"""Quotas with real triggers: LimitExceededException (active jobs), ThrottlingException
(control-plane request rate), ServiceUnavailableException (a part the request needs is down)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from plugin_stack import served, unique

from jobsctl.service.quotas import Quotas
from jobsctl.stack import Stack, iot_client

ARN = "arn:aws:iot:us-east-1:123456789012"
DOC = json.dumps({"operation": "reboot"})
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})


@pytest.fixture()
def limited(tmp_path: Path) -> Iterator[Callable[[Quotas], Stack]]:
    stacks: list[Stack] = []

    def make(quotas: Quotas) -> Stack:
        s = Stack(tmp_path / f"state{len(stacks)}", quotas=quotas)
        stacks.append(s)
        s.start()
        return s

    yield make
    for s in stacks:
        s.stop()


def _error(call: Callable[[], Any]) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as exc:
        call()
    r = exc.value.response
    return r["ResponseMetadata"]["HTTPStatusCode"], r["Error"]["Code"], r["Error"]["Message"]


def test_active_jobs_quota_answers_limit_exceeded(
    limited: Callable[[Quotas], Stack],
) -> None:
    stack = limited(Quotas(active_jobs=2))
    thing = unique("q")
    stack.create_thing(thing)
    iot = iot_client(stack.endpoints, config=NO_RETRIES)

    def create() -> str:
        job_id = unique("job")
        iot.create_job(jobId=job_id, targets=[f"{ARN}:thing/{thing}"], document=DOC)
        return job_id

    first = create()
    create()  # the second of 2
    status, code, msg = _error(create)
    assert (status, code) == (410, "LimitExceededException") and "quota is 2" in msg
    iot.cancel_job(jobId=first)
    create()  # a canceled job is no longer active


def test_control_plane_rate_answers_throttling_per_operation(
    limited: Callable[[Quotas], Stack],
) -> None:
    stack = limited(Quotas(api_rate_per_second=0.5))  # a burst of 1, a token every 2 s
    iot = iot_client(stack.endpoints, config=NO_RETRIES)
    codes = []
    for _ in range(3):
        try:
            iot.list_jobs()
            codes.append(200)
        except ClientError as exc:
            codes.append(exc.response["ResponseMetadata"]["HTTPStatusCode"])
            assert exc.response["Error"]["Code"] == "ThrottlingException"
    assert codes[0] == 200 and 429 in codes[1:]
    iot.list_things()  # another operation has its own bucket


def test_object_store_down_answers_service_unavailable(stack: Stack) -> None:
    thing = unique("q")
    stack.create_thing(thing)
    url = stack.upload("docs/q.json", DOC.encode())
    iot = iot_client(stack.endpoints, config=NO_RETRIES)
    job = unique("job")
    iot.create_job(jobId=job, targets=[f"{ARN}:thing/{thing}"], documentSource=url)
    assert stack.objects is not None
    stack.objects.stop()
    status, code, msg = _error(
        lambda: iot.create_job(
            jobId=unique("job"), targets=[f"{ARN}:thing/{thing}"], documentSource=url
        )
    )
    assert (status, code) == (503, "ServiceUnavailableException") and "object store" in msg


def test_serve_takes_the_quota_settings(tmp_path: Path) -> None:
    state = tmp_path / "serve"
    with served(state, "--max-active-jobs", "1", "--api-rate", "50") as endpoints:
        assert endpoints["jobs_data_url"].startswith("https://localhost:")
        iot = iot_client(endpoints, config=NO_RETRIES)
        iot.create_thing(thingName="q1")
        iot.create_job(jobId="one", targets=[f"{ARN}:thing/q1"], document=DOC)
        status, code, _ = _error(
            lambda: iot.create_job(jobId="two", targets=[f"{ARN}:thing/q1"], document=DOC)
        )
        assert (status, code) == (410, "LimitExceededException")
