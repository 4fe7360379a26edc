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
        self.connects = 0
        self.disconnects = 0
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.c.tls_set(
            ca_certs=str(broker.ca_file), certfile=str(creds.cert), keyfile=str(creds.key)
        )
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.connect("localhost", broker.port)
        self.c.loop_start()

    def _on_connect(self, *args: Any) -> None:
        with self.cond:
            self.connects += 1
            self.cond.notify_all()

    def _on_disconnect(self, *args: Any) -> None:
        with self.cond:
            self.disconnects += 1
            self.cond.notify_all()

    def wait_connected(self) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.connects > 0, 10), "no CONNACK"

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


def test_a_thing_taking_another_client_id_or_the_services_throws_nobody_off(
    broker: Broker, thing_creds: Any, ca: CertificateAuthority, tmp_path: Any
) -> None:
    # The broker gives every connection its certificate's CN as client id (as AWS binds
    # client/${iot:Connection.Thing.ThingName}): an impostor asking for the victim's id or the
    # service's gets its own, and takes over nobody's session.
    service = _Client(broker, ca.issue(SERVICE_IDENTITY, tmp_path / "svc"), SERVICE_IDENTITY)
    victim = _Client(broker, thing_creds("id-victim"), "id-victim")
    impostors = []
    try:
        service.wait_connected()
        victim.wait_connected()
        assert service.subscribe("$aws/things/+/jobs/#") == [1]
        for stolen in ("id-victim", SERVICE_IDENTITY, "jobs-service"):
            imp = _Client(broker, thing_creds("id-impostor"), stolen)
            imp.wait_connected()
            impostors.append(imp)
            # Each impostor with the same certificate replaces the previous one (one session
            # per identity, as on AWS); the victim and the service stay connected.
            victim.publish("$aws/things/id-victim/jobs/get", stolen.encode())
            service.wait_payload(stolen.encode())
        assert victim.disconnects == 0 and victim.connects == 1
        assert service.disconnects == 0 and service.connects == 1
    finally:
        for c in (*impostors, victim, service):
            c.close()


def test_the_services_identity_is_not_a_name_a_thing_can_have() -> None:
    import pytest

    from jobsctl.errors import JobsctlError
    from jobsctl.things import check_name

    for name in (SERVICE_IDENTITY, "jobs-service", "Jobs-Service"):
        with pytest.raises(JobsctlError):
            check_name(name)
