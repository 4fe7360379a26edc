"""MQTT-based file delivery: CreateStream & co through boto3, and the stream topics through a
plain paho client with the thing's certificate, in JSON and in CBOR."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import uuid
from collections.abc import Callable
from typing import Any

import botocore.exceptions
import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from jobsctl.objectstore import DEFAULT_BUCKET
from jobsctl.service.streams import CODES
from jobsctl.stack import Stack

BUCKET = DEFAULT_BUCKET
ROLE = "arn:aws:iam::123456789012:role/ota"


class StreamClient:
    """A thing talking to one stream in one format."""

    REPLIES = ("description", "data", "rejected")

    def __init__(self, stack: Stack, stream: str, fmt: str) -> None:
        self.name = "st-" + uuid.uuid4().hex[:8]
        info = stack.create_thing(self.name)
        self.fmt = fmt
        self.base = f"$aws/things/{self.name}/streams/{stream}/"
        self.messages: list[tuple[str, Any]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.name)
        self.client.tls_set(info["ca_file"], info["cert_file"], info["key_file"])
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("localhost", stack.mqtt_port)
        self.client.loop_start()
        self.client.subscribe([(self.base + f"{v}/{fmt}", 1) for v in self.REPLIES])
        assert subscribed.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        raw = bytes(msg.payload)
        body = cbor2.loads(raw) if self.fmt == "cbor" else json.loads(raw)
        with self.cond:
            self.messages.append((msg.topic.removeprefix(self.base), body))
            self.cond.notify_all()

    def send(self, verb: str, body: Any, raw: bytes | None = None) -> int:
        with self.cond:
            since = len(self.messages)
        if raw is None:
            raw = cbor2.dumps(body) if self.fmt == "cbor" else json.dumps(body).encode()
        self.client.publish(self.base + f"{verb}/{self.fmt}", raw, qos=1).wait_for_publish(10)
        return since

    def wait(self, since: int, done: Callable[[list[tuple[str, Any]]], bool]) -> list:
        with self.cond:
            ok = self.cond.wait_for(lambda: done(self.messages[since:]), 10)
            assert ok, f"no answer: {self.messages[since:]}"
            return self.messages[since:]

    def rejected(self, verb: str, body: Any, raw: bytes | None = None) -> dict[str, Any]:
        since = self.send(verb, body, raw)
        got = self.wait(since, lambda m: any(t.startswith("rejected/") for t, _ in m))
        return next(b for t, b in got if t.startswith("rejected/"))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def image(stack_session: Stack) -> bytes:
    data = os.urandom(3 * 4096 + 1000)
    stack_session.upload("streams/image.bin", data)
    stack_session.upload("streams/small.bin", b"hello")
    return data


def _stream(stack: Stack, files: list[tuple[int, str]], description: str | None = "fw") -> str:
    sid = "s-" + uuid.uuid4().hex[:10]
    extra = {"description": description} if description else {}
    out = stack.iot_client().create_stream(
        streamId=sid,
        files=[{"fileId": fid, "s3Location": {"bucket": BUCKET, "key": key}} for fid, key in files],
        roleArn=ROLE,
        **extra,
    )
    assert out["streamId"] == sid and out["streamVersion"] == 1
    assert out["streamArn"].endswith(f":stream/{sid}")
    return sid


def test_stream_control_plane_round_trip(stack_session: Stack, image: bytes) -> None:
    iot = stack_session.iot_client()
    sid = _stream(stack_session, [(0, "streams/image.bin"), (7, "streams/small.bin")])
    info = iot.describe_stream(streamId=sid)["streamInfo"]
    assert info["streamVersion"] == 1 and info["roleArn"] == ROLE
    assert [f["fileId"] for f in info["files"]] == [0, 7]
    assert info["files"][0]["s3Location"]["key"] == "streams/image.bin"
    assert sid in [s["streamId"] for s in iot.list_streams()["streams"]]
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        _stream_again = iot.create_stream(
            streamId=sid,
            files=[{"fileId": 0, "s3Location": {"bucket": BUCKET, "key": "streams/small.bin"}}],
            roleArn=ROLE,
        )
    up = iot.update_stream(streamId=sid, description="fw 2")
    assert up["streamVersion"] == 2 and up["description"] == "fw 2"
    iot.delete_stream(streamId=sid)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_stream(streamId=sid)


def test_create_stream_checks_its_input(stack_session: Stack, image: bytes) -> None:
    iot = stack_session.iot_client()
    loc = {"bucket": BUCKET, "key": "streams/small.bin"}
    with pytest.raises(iot.exceptions.InvalidRequestException, match="no such object"):
        iot.create_stream(
            streamId="s-missing",
            files=[{"fileId": 0, "s3Location": {"bucket": BUCKET, "key": "nope.bin"}}],
            roleArn=ROLE,
        )
    with pytest.raises(iot.exceptions.InvalidRequestException, match="own fileId"):
        iot.create_stream(
            streamId="s-dup",
            files=[{"fileId": 1, "s3Location": loc}, {"fileId": 1, "s3Location": loc}],
            roleArn=ROLE,
        )
    with pytest.raises(iot.exceptions.InvalidRequestException, match="less than or equal to 255"):
        iot.create_stream(
            streamId="s-bad", files=[{"fileId": 300, "s3Location": loc}], roleArn=ROLE
        )
    with pytest.raises(botocore.exceptions.ParamValidationError):
        iot.create_stream(streamId="s-nofiles", roleArn=ROLE)


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_stream_blocks_by_offset_and_bitmap(stack_session: Stack, image: bytes, fmt: str) -> None:
    sid = _stream(stack_session, [(0, "streams/image.bin"), (3, "streams/small.bin")])
    c = StreamClient(stack_session, sid, fmt)
    try:
        since = c.send("describe", {"c": "d1"})
        (_, desc), *_ = c.wait(since, lambda m: bool(m))
        assert desc == {
            "c": "d1",
            "s": 1,
            "d": "fw",
            "r": [{"f": 0, "z": len(image)}, {"f": 3, "z": 5}],
        }

        def payload(b: dict[str, Any]) -> bytes:
            return b["p"] if fmt == "cbor" else base64.b64decode(b["p"])

        # o + n: blocks 1..3 of 4096 (the last is the 1000-byte tail); n past the end is clipped
        since = c.send("get", {"c": "g1", "s": 1, "f": 0, "l": 4096, "o": 1, "n": 10})
        got = c.wait(since, lambda m: len(m) >= 3)
        assert [t for t, _ in got] == ["data/" + fmt] * 3
        assert [(b["c"], b["f"], b["i"], b["l"]) for _, b in got] == [
            ("g1", 0, 1, 4096),
            ("g1", 0, 2, 4096),
            ("g1", 0, 3, 1000),
        ]
        assert b"".join(payload(b) for _, b in got) == image[4096:]
        # a bitmap: blocks 0 and 2 only
        bits = bytes([0b101])
        b = bits if fmt == "cbor" else base64.b64encode(bits).decode()
        since = c.send("get", {"f": 0, "l": 4096, "b": b})
        got = c.wait(since, lambda m: len(m) >= 2)
        assert [x["i"] for _, x in got] == [0, 2] and "c" not in got[0][1]
        assert payload(got[1][1]) == image[8192:12288]
        # the whole file in 256-byte blocks hashes to the object
        n = -(-len(image) // 256)
        since = c.send("get", {"f": 0, "l": 256, "o": 0, "n": n})
        got = c.wait(since, lambda m: len(m) >= n)
        got.sort(key=lambda tb: tb[1]["i"])
        digest = hashlib.sha256(b"".join(payload(x) for _, x in got)).digest()
        assert digest == hashlib.sha256(image).digest()
    finally:
        c.close()


@pytest.mark.parametrize("fmt", ["json", "cbor"])
def test_stream_rejections(stack_session: Stack, image: bytes, fmt: str) -> None:
    sid = _stream(stack_session, [(0, "streams/image.bin")], description=None)
    c = StreamClient(stack_session, sid, fmt)
    try:
        cases: list[tuple[str, Any, str]] = [
            ("get", {"c": "v", "s": 2, "f": 0, "l": 4096}, "VersionMismatch"),
            ("get", {"c": "f", "f": 9, "l": 4096}, "ResourceNotFound"),
            ("get", {"c": "l", "f": 0, "l": 255}, "InvalidRequest"),
            ("get", {"c": "l2", "f": 0, "l": 131073}, "InvalidRequest"),
            ("get", {"c": "nf", "l": 4096}, "InvalidRequest"),
            ("get", {"c": "o", "f": 0, "l": 4096, "o": 4}, "InvalidRequest"),
            ("get", {"c": "nb", "f": 0, "l": 4096, "n": 2, "b": "AQ=="}, "InvalidRequest"),
            ("get", {"c": "ty", "f": "0", "l": 4096}, "InvalidRequest"),
            ("get", {"c": "x" * 65, "f": 0, "l": 4096}, "InvalidRequest"),
            ("get", [1, 2], "InvalidRequest"),
            ("fetch", {"c": "t"}, "InvalidTopic"),
        ]
        for verb, body, code in cases:
            rej = c.rejected(verb, body)
            assert rej["o"] == code and rej["m"], (body, rej)
            if isinstance(body, dict) and len(body.get("c", "")) <= 64:
                assert rej["c"] == body["c"]
        bad = c.rejected("get", None, raw=b"\xff\x00{")
        assert bad["o"] == ("InvalidCbor" if fmt == "cbor" else "InvalidJson")
        if fmt == "json":  # a 128 KB block would not fit one message in base64
            assert c.rejected("get", {"f": 0, "l": 131072})["o"] == "InvalidRequest"
        stack_session.iot_client().delete_stream(streamId=sid)
        assert c.rejected("describe", {"c": "gone"})["o"] == "ResourceNotFound"
        assert all(code in CODES for _, _, code in cases)
    finally:
        c.close()
