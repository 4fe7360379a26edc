"""Fixtures for the local Jobs stack: ``stack``, ``stack_session`` and ``jobs_device``.

``jobs_device(stack, name, group=None)`` creates the thing and returns a :class:`JobsDevice`:
a real paho MQTT client with the thing's certificate, subscribed to its Jobs topics, that can
send a request and wait for its reply, and wait for pushed messages.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from jobsctl.stack import Stack


@contextlib.contextmanager
def served(
    state: Path, *options: str, jobsctl: Path | None = None, **popen: Any
) -> Iterator[dict[str, Any]]:
    """``jobsctl serve --state-dir STATE [OPTIONS]`` in a process of its own (``jobsctl``:
    another installation's command): its endpoints once it says it serves (its pid in them);
    after the block it must stop on SIGTERM with status 0."""
    command = jobsctl or Path(sys.executable).parent / "jobsctl"
    proc = subprocess.Popen(
        [str(command), "serve", "--state-dir", str(state), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        **popen,
    )
    try:
        assert proc.stdout is not None
        assert any("serving" in line for line in proc.stdout), "serve did not start"
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # never a full pipe
        endpoints = json.loads((state / "endpoints.json").read_text())
        assert endpoints["service_pid"] == proc.pid
        yield endpoints
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class JobsDevice:
    """A thing speaking the AWS IoT Jobs MQTT API, for tests."""

    def __init__(self, name: str, port: int, cert: str, key: str, ca_file: str) -> None:
        self.name = name
        self.prefix = f"$aws/things/{name}/jobs/"
        self.messages: list[tuple[str, Any]] = []
        self._cond = threading.Condition()
        self._tokens = itertools.count(1)
        self._subacks: dict[int, list[int]] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
        self.client.tls_set(ca_certs=ca_file, certfile=cert, keyfile=key)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect("localhost", port)
        self.client.loop_start()
        granted = self.subscribe(self.prefix + "#")
        assert granted == [1], f"subscription refused: {granted}"

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            body: Any = json.loads(msg.payload)
        except (ValueError, RecursionError):  # its own hostile requests come back too
            body = bytes(msg.payload)
        with self._cond:
            self.messages.append((msg.topic, body))
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._cond:
            self._subacks[mid] = [c.value for c in codes]
            self._cond.notify_all()

    def subscribe(self, topic: str, timeout: float = 10) -> list[int]:
        """Subscribe (QoS 1) and return the SUBACK codes."""
        _, maybe_mid = self.client.subscribe(topic, qos=1)
        assert maybe_mid is not None, "not connected"
        mid: int = maybe_mid
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._subacks, timeout), "no SUBACK"
            return self._subacks.pop(mid)

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def wait_for(
        self,
        suffix: str,
        predicate: Callable[[Any], bool] = lambda body: True,
        since: int = 0,
        timeout: float = 10,
    ) -> Any:
        """The first message on prefix+suffix (from index ``since``) matching ``predicate``."""
        topic = self.prefix + suffix

        def find() -> Any:
            for t, body in self.messages[since:]:
                if t == topic and predicate(body):
                    return (body,)
            return None

        with self._cond:
            found = self._cond.wait_for(find, timeout)
        assert found, f"{self.name}: nothing on {topic} within {timeout} s"
        return found[0]

    def wait_for_any(self, topics: set[str], since: int = 0, timeout: float = 10) -> str:
        """The first topic of ``topics`` with a message from index ``since``."""

        def find() -> Any:
            for t, _ in self.messages[since:]:
                if t in topics:
                    return (t,)
            return None

        with self._cond:
            found = self._cond.wait_for(find, timeout)
        assert found, f"{self.name}: nothing on {sorted(topics)} within {timeout} s"
        return str(found[0])

    def publish(self, suffix: str, payload: bytes | str, qos: int = 1) -> None:
        self.client.publish(self.prefix + suffix, payload, qos=qos).wait_for_publish(10)

    def request(
        self, suffix: str, body: dict[str, Any] | None = None, timeout: float = 10
    ) -> tuple[str, dict[str, Any]]:
        """Publish a request (fresh clientToken unless given); ("accepted"/"rejected", reply)."""
        body = dict(body or {})
        body.setdefault("clientToken", f"{self.name}-{next(self._tokens)}")
        token = body["clientToken"]
        since = self.mark()
        self.publish(suffix, json.dumps(body))
        topics = {self.prefix + suffix + "/accepted", self.prefix + suffix + "/rejected"}

        def find() -> Any:
            for t, reply in self.messages[since:]:
                if t in topics and isinstance(reply, dict) and reply.get("clientToken") == token:
                    return ((t.rsplit("/", 1)[1], reply),)
            return None

        with self._cond:
            found = self._cond.wait_for(find, timeout)
        assert found, f"{self.name}: no reply to {suffix} within {timeout} s"
        return found[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A fresh local stack (broker, service, object store) in tmp_path; stopped after."""
    s = Stack(tmp_path / "state")
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def stack_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack for many tests: each test must use its own thing names and job ids."""
    s = Stack(tmp_path_factory.mktemp("stack-session") / "state")
    s.start()
    try:
        yield s
    finally:
        s.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture()
def jobs_device() -> Iterator[Callable[..., JobsDevice]]:
    """``jobs_device(stack, name=None, group=None)``: a connected thing; closed after."""
    devices: list[JobsDevice] = []

    def make(stack: Stack, name: str | None = None, group: str | None = None) -> JobsDevice:
        info = stack.create_thing(name or unique("dev"), group=group)
        dev = JobsDevice(
            info["thing_name"],
            stack.mqtt_port,
            info["cert_file"],
            info["key_file"],
            info["ca_file"],
        )
        devices.append(dev)
        return dev

    yield make
    for d in devices:
        d.close()


def wait_until(condition: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
    """Poll a condition of the service's state (not a sleep-for-synchronisation)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
