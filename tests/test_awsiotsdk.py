"""The AWS IoT Device SDK v2 (awsiotsdk) jobs client against the local service, as a device
built on AWS's own SDK would use it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from awscrt import mqtt_request_response
from awsiot import ServiceStreamOptions, iotjobs, mqtt5_client_builder
from plugin_stack import unique

from jobsctl.stack import Stack

ARN = "arn:aws:iot:us-east-1:123456789012"


class SdkDevice:
    """A thing connected with awsiotsdk's MQTT5 builder and its IotJobsClientV2."""

    def __init__(self, stack: Stack) -> None:
        info = stack.create_thing(unique("sdk"))
        self.name = info["thing_name"]
        connected: Future[None] = Future()
        self._stopped: Future[None] = Future()
        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint="localhost",
            port=stack.mqtt_port,
            cert_filepath=info["cert_file"],
            pri_key_filepath=info["key_file"],
            ca_filepath=info["ca_file"],
            client_id=self.name,
            on_lifecycle_connection_success=lambda _: connected.set_result(None),
            on_lifecycle_stopped=lambda _: self._stopped.set_result(None),
        )
        self.client.start()
        connected.result(timeout=15)
        options = mqtt_request_response.ClientOptions(
            max_request_response_subscriptions=4,
            max_streaming_subscriptions=2,
            operation_timeout_in_seconds=10,
        )
        self.jobs = iotjobs.IotJobsClientV2(self.client, options)
        self.events: list[iotjobs.JobExecutionsChangedEvent] = []
        self._cond = threading.Condition()

    def _event(self, event: iotjobs.JobExecutionsChangedEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def watch_changes(self) -> Any:
        subscribed: Future[None] = Future()

        def status(event: mqtt_request_response.SubscriptionStatusEvent) -> None:
            if (
                event.type
                == mqtt_request_response.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED
                and not subscribed.done()
            ):
                subscribed.set_result(None)

        stream = self.jobs.create_job_executions_changed_stream(
            iotjobs.JobExecutionsChangedSubscriptionRequest(thing_name=self.name),
            ServiceStreamOptions(
                incoming_event_listener=self._event, subscription_status_listener=status
            ),
        )
        stream.open()
        subscribed.result(timeout=10)
        return stream

    def wait_event(self, predicate: Any, timeout: float = 10) -> iotjobs.JobExecutionsChangedEvent:
        def find() -> Any:
            return next((e for e in self.events if predicate(e)), None)

        with self._cond:
            assert self._cond.wait_for(find, timeout), f"no such event in {self.events}"
            return find()

    def close(self) -> None:
        self.client.stop()
        self._stopped.result(timeout=10)


@pytest.fixture()
def sdk_device(stack_session: Stack) -> Iterator[SdkDevice]:
    dev = SdkDevice(stack_session)
    try:
        yield dev
    finally:
        dev.close()


def test_sdk_v2_jobs_client_gets_notify_when_an_execution_goes_in_progress(
    stack_session: Stack, sdk_device: SdkDevice
) -> None:
    stream = sdk_device.watch_changes()
    job = unique("sdk-job")
    stack_session.iot_client().create_job(
        jobId=job,
        targets=[f"{ARN}:thing/{sdk_device.name}"],
        document=json.dumps({"operation": "reboot"}),
    )
    queued = sdk_device.wait_event(lambda e: "QUEUED" in (e.jobs or {}))
    assert [s.job_id for s in queued.jobs["QUEUED"]] == [job]
    started = sdk_device.jobs.start_next_pending_job_execution(
        iotjobs.StartNextPendingJobExecutionRequest(
            thing_name=sdk_device.name, step_timeout_in_minutes=5
        )
    ).result(timeout=10)
    assert started.execution.job_id == job and started.execution.status == "IN_PROGRESS"
    assert started.execution.job_document == {"operation": "reboot"}
    moved = sdk_device.wait_event(lambda e: "IN_PROGRESS" in (e.jobs or {}))
    assert [s.job_id for s in moved.jobs["IN_PROGRESS"]] == [job]
    assert "QUEUED" not in moved.jobs
    updated = sdk_device.jobs.update_job_execution(
        iotjobs.UpdateJobExecutionRequest(
            thing_name=sdk_device.name,
            job_id=job,
            status="SUCCEEDED",
            include_job_execution_state=True,
        )
    ).result(timeout=10)
    assert updated.execution_state.status == "SUCCEEDED"
    sdk_device.wait_event(lambda e: e.jobs == {})
    del stream


def test_python_m_bench_latency_compares_the_agent_with_the_sdk(capsys: Any) -> None:
    # README: `python -m bench.latency`, as written, with 2 jobs each in 2 rounds and 2 s of an
    # idle agent (its figures are a benchmark's, not checked against time here): each round's
    # percentiles and ratios, their spread, the idle agent's allocations and the load.
    import re

    from bench import latency

    assert latency.main(["--jobs", "2", "--repeat", "2", "--idle-s", "2"]) == 0
    out = capsys.readouterr().out
    for i in (1, 2):
        assert re.search(
            rf"round {i}: agent p50 [\d.]+ ms, p90 [\d.]+ ms; SDK p50 [\d.]+ ms, p90 [\d.]+ "
            r"ms; agent/SDK p50 ratio [\d.]+, p90 ratio [\d.]+",
            out,
        ), out
    assert "round 3" not in out, out
    assert re.search(r"our agent: p50 [\d.]+ ms, p90 [\d.]+ ms \(median of 2 rounds\)", out)
    assert re.search(r"awsiotsdk, CPython\): p50 [\d.]+ ms, p90 [\d.]+ ms", out), out
    assert re.search(r"p50 ratio per round [\d.]+, [\d.]+: min [\d.]+, median [\d.]+, max", out)
    assert "2 jobs each per round" in out, out
    assert re.search(r"idle agent: \d+ bytes allocated in \d+ ms, \d+ bytes/min", out), out
    assert "load average (1 min)" in out, out
