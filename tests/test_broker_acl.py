"""The broker's ACL: a thing's certificate reaches only its own ``$aws/things/<name>/`` topics."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from jobsctl.broker import SERVICE_IDENTITY, Broker
from jobsctl.pki import CertificateAuthority, Credentials


class _Client:
    def __init__(self, broker: Broker, creds: Credentials, client_id: str) -> None:
        self.cond = threading.Condition()
        self.subacks: dict[int, list[int]] = {}
        self.got: list[tuple[str, bytes]] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.c.tls_set(
            ca_certs=str(broker.ca_file), certfile=str(creds.cert), keyfile=str(creds.key)
        )
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.connect("localhost", broker.port)
        self.c.loop_start()

    def _on_subscribe(self, c: Any, u: Any, mid: int, codes: Any, props: Any) -> None:
        with self.cond:
            self.subacks[mid] = [code.value for code in codes]
            self.cond.notify_all()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.got.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def subscribe(self, topic: str) -> list[int]:
        _, mid = self.c.subscribe(topic, qos=1)
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.subacks, 10), "no SUBACK"
            return self.subacks[mid]  # type: ignore[index]

    def publish(self, topic: str, payload: bytes) -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(10)

    def wait_payload(self, payload: bytes) -> list[tuple[str, bytes]]:
        with self.cond:
            assert self.cond.wait_for(lambda: any(p == payload for _, p in self.got), 10)
            return list(self.got)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_thing_subscribed_to_another_things_topics_never_receives_them(
    broker: Broker, thing_creds: Any, ca: CertificateAuthority, tmp_path: Any
) -> None:
    # mosquitto 2.0.11's acl_file answers SUBACK with the granted QoS even for a topic the
    # client may not read, and enforces read access on every delivery instead; so what
    # must hold is that nothing of another thing's ever reaches the subscriber.
    service = _Client(broker, ca.issue(SERVICE_IDENTITY, tmp_path / "svc"), "svc-acl-sub")
    a = _Client(broker, thing_creds("acl-a"), "acl-a")
    try:
        assert a.subscribe("$aws/things/acl-a/jobs/#") == [1]
        for foreign in ("$aws/things/acl-b/jobs/notify-next", "$aws/things/+/jobs/#", "#"):
            assert a.subscribe(foreign)[0] in (0x80, 0, 1)
        service.publish("$aws/things/acl-b/jobs/notify-next", b"secret-1")
        service.publish("$aws/things/acl-b/jobs/start-next/accepted", b"secret-2")
        service.publish("$aws/things/acl-a/jobs/notify", b"marker")
        got = a.wait_payload(b"marker")
        assert {t for t, _ in got} == {"$aws/things/acl-a/jobs/notify"}
        assert not {p for _, p in got} & {b"secret-1", b"secret-2"}
    finally:
        a.close()
        service.close()


def test_publish_to_another_things_topic_never_reaches_the_service(
    broker: Broker, thing_creds: Any, ca: CertificateAuthority, tmp_path: Any
) -> None:
    service = _Client(broker, ca.issue(SERVICE_IDENTITY, tmp_path / "svc"), "svc-acl")
    a = _Client(broker, thing_creds("acl-c"), "acl-c")
    try:
        assert service.subscribe("$aws/things/+/jobs/#") == [1]
        a.publish("$aws/things/acl-d/jobs/start-next", b"forged")
        # Messages of one connection arrive in order: once A's own (allowed) marker
        # is through, the forged publish would have been delivered before it.
        a.publish("$aws/things/acl-c/jobs/get", b"marker")
        got = service.wait_payload(b"marker")
        assert ("$aws/things/acl-c/jobs/get", b"marker") in got
        assert all(p != b"forged" for _, p in got)
    finally:
        a.close()
        service.close()
