"""Jobs events on $aws/events/..., in AWS's shapes, as an operator's watcher receives them."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from plugin_stack import JobsDevice, unique

from jobsctl.broker import EVENTS_IDENTITY
from jobsctl.stack import Stack

ARN = "arn:aws:iot:us-east-1:123456789012"


class Watcher:
    def __init__(self, stack: Stack) -> None:
        creds = stack.events_credentials()
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=EVENTS_IDENTITY)
        self.client.tls_set(
            ca_certs=stack.endpoints["ca_file"], certfile=str(creds.cert), keyfile=str(creds.key)
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.granted: list[int] = []
        self.client.connect("localhost", stack.mqtt_port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, json.loads(msg.payload)))
            self.cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self.cond:
            self.granted = [c.value for c in codes]
            self.cond.notify_all()

    def subscribe(self, topic: str) -> list[int]:
        self.granted = []
        self.client.subscribe(topic, qos=1)
        with self.cond:
            assert self.cond.wait_for(lambda: self.granted, 10), "no SUBACK"
        return self.granted

    def wait(self, topic: str, timeout: float = 10) -> dict[str, Any]:
        def find() -> Any:
            return next((b for t, b in self.messages if t == topic), None)

        with self.cond:
            assert self.cond.wait_for(find, timeout), f"nothing on {topic}: {self.messages}"
            return dict(find())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def watcher(stack_session: Stack) -> Iterator[Watcher]:
    w = Watcher(stack_session)
    assert w.subscribe("$aws/events/#") == [1]
    try:
        yield w
    finally:
        w.close()


def test_job_and_execution_events_have_aws_shapes(
    stack_session: Stack, watcher: Watcher, jobs_device: Callable[..., JobsDevice]
) -> None:
    a, b = jobs_device(stack_session), jobs_device(stack_session)
    iot = stack_session.iot_client()
    job_id = unique("evt")
    iot.create_job(
        jobId=job_id,
        targets=[f"{ARN}:thing/{a.name}", f"{ARN}:thing/{b.name}"],
        document=json.dumps({"operation": "reboot"}),
    )
    a.request("start-next")
    a.request(f"{job_id}/update", {"status": "SUCCEEDED", "statusDetails": {"reason": "ok"}})
    ok = watcher.wait(f"$aws/events/jobExecution/{job_id}/succeeded")
    assert ok["eventType"] == "JOB_EXECUTION" and ok["operation"] == "succeeded"
    assert ok["jobId"] == job_id and ok["thingArn"] == f"{ARN}:thing/{a.name}"
    assert ok["status"] == "SUCCEEDED" and ok["statusDetails"] == {"reason": "ok"}
    assert isinstance(ok["timestamp"], int) and ok["eventId"]
    b.request(f"{job_id}/update", {"status": "REJECTED"})
    assert watcher.wait(f"$aws/events/jobExecution/{job_id}/rejected")["status"] == "REJECTED"
    done = watcher.wait(f"$aws/events/job/{job_id}/completed")
    assert done["eventType"] == "JOB" and done["status"] == "COMPLETED"
    assert done["targetSelection"] == "SNAPSHOT" and len(done["targets"]) == 2
    assert done["jobProcessDetails"]["numberOfSucceededThings"] == 1
    assert done["jobProcessDetails"]["numberOfRejectedThings"] == 1
    assert done["completedAt"] >= done["createdAt"]
    iot.delete_job(jobId=job_id)
    watcher.wait(f"$aws/events/job/{job_id}/deletion_in_progress")
    assert watcher.wait(f"$aws/events/job/{job_id}/deleted")["jobId"] == job_id


def test_cancel_and_timeout_events(
    stack_session: Stack, watcher: Watcher, jobs_device: Callable[..., JobsDevice]
) -> None:
    dev = jobs_device(stack_session)
    iot = stack_session.iot_client()
    job_id = unique("evt")
    iot.create_job(
        jobId=job_id,
        targets=[f"{ARN}:thing/{dev.name}"],
        document=json.dumps({"operation": "reboot"}),
    )
    dev.request("start-next", {"stepTimeoutInMinutes": 1})
    stack_session.advance_clock(61)
    timed_out = watcher.wait(f"$aws/events/jobExecution/{job_id}/timed_out")
    assert timed_out["status"] == "TIMED_OUT"
    watcher.wait(f"$aws/events/job/{job_id}/completed")
    other = unique("evt")
    iot.create_job(
        jobId=other,
        targets=[f"{ARN}:thing/{dev.name}"],
        document=json.dumps({"operation": "reboot"}),
    )
    iot.cancel_job(jobId=other, reasonCode="OPERATOR", comment="not today")
    canceled = watcher.wait(f"$aws/events/job/{other}/canceled")
    assert canceled["status"] == "CANCELED" and canceled["reasonCode"] == "OPERATOR"
    assert canceled["comment"] == "not today"
    assert watcher.wait(f"$aws/events/jobExecution/{other}/canceled")["status"] == "CANCELED"


def test_a_thing_never_receives_the_fleet_events(
    stack_session: Stack, watcher: Watcher, jobs_device: Callable[..., JobsDevice]
) -> None:
    dev = jobs_device(stack_session)
    assert dev.subscribe("$aws/events/#")[0] in (0x80, 0, 1)  # mosquitto may grant it
    job_id = unique("evt")
    stack_session.iot_client().create_job(
        jobId=job_id,
        targets=[f"{ARN}:thing/{dev.name}"],
        document=json.dumps({"operation": "reboot"}),
    )
    stack_session.iot_client().cancel_job(jobId=job_id)
    watcher.wait(f"$aws/events/job/{job_id}/canceled")  # published, and the watcher has it
    dev.request("get")  # a round trip through the broker after the event
    assert not [t for t, _ in dev.messages if t.startswith("$aws/events/")]
