"""AWS IoT MQTT-based file delivery: streams and their MQTT data plane.

Control plane (REST, shapes from botocore's ``iot`` model): ``CreateStream``,
``DescribeStream``, ``UpdateStream``, ``DeleteStream``, ``ListStreams``; a stream is a list of
files (``fileId`` 0-255) in the object store, with a version that every update bumps.

Data plane (a privileged MQTT client of its own, so that block traffic never waits behind Jobs
replies): a thing publishes on ``$aws/things/THING/streams/STREAM/describe/F`` or ``.../get/F``
(F = ``json`` or ``cbor``) and gets ``.../description/F``, ``.../data/F`` (one message per block)
or ``.../rejected/F``. Keys are AWS's one-letter keys: request ``c`` client token, ``s`` stream
version, ``f`` file id, ``l`` block size, ``o`` block offset, ``n`` number of blocks, ``b``
bitmap of wanted blocks (bit i, least significant bit first in each byte, means block o+i;
bytes in CBOR, base64 in JSON); data ``c``, ``f``, ``l`` (bytes in this block), ``i`` (block
index), ``p`` (payload: bytes in CBOR, base64 in JSON); description ``c``, ``s``, ``d``,
``r`` = ``[{"f": id, "z": size}]``; rejected ``o`` (code), ``m`` (message), ``c``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from .common import ACCOUNT_ID, REGION
from .errors import ApiError, invalid, not_found
from .model import Model

log = logging.getLogger("jobsctl.streams")

OPERATIONS = ("CreateStream", "DescribeStream", "UpdateStream", "DeleteStream", "ListStreams")

# The data plane's limits. Block size and client token are AWS's documented ones; a JSON data
# message carries the block in base64 (4/3 of it), and AWS IoT caps a message at 128 KB, so a
# JSON block is at most 96 KB. The bitmap can name at most 8 * 12288 blocks.
BLOCK_MIN = 256
BLOCK_MAX = 131072
BLOCK_MAX_JSON = 98304
TOKEN_MAX = 64
BITMAP_MAX = 12288
CODES = (
    "InvalidTopic",
    "InvalidJson",
    "InvalidCbor",
    "InvalidRequest",
    "VersionMismatch",
    "ResourceNotFound",
    "InternalError",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
  stream_id TEXT PRIMARY KEY, description TEXT, files TEXT NOT NULL, role_arn TEXT NOT NULL,
  version INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
"""
_TOPIC = re.compile(r"\$aws/things/([^/]+)/streams/([^/]+)/([^/]+)/([^/]+)")

FetchObject = Callable[[str, str], bytes]


def stream_arn(stream_id: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT_ID}:stream/{stream_id}"


class StreamError(Exception):
    """A rejected stream request: one of :data:`CODES` and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class Streams:
    """Stream records in the service's SQLite store, and the files they name."""

    def __init__(self, model: Model, fetch_object: FetchObject | None) -> None:
        self.model = model
        self.fetch_object = fetch_object
        with model.lock:
            model.db.executescript(_SCHEMA)
        self._cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._cache_lock = threading.Lock()

    # ---------------------------------------------------------------- control plane

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "CreateStream": self.create,
            "DescribeStream": lambda p: self.describe(p["streamId"]),
            "UpdateStream": self.update,
            "DeleteStream": self.delete,
            "ListStreams": self.list_streams,
        }

    def _check_files(self, files: list[dict[str, Any]]) -> str:
        ids = [f["fileId"] for f in files]
        if len(set(ids)) != len(ids):
            raise invalid("Each file of a stream needs its own fileId.")
        for f in files:
            loc = f.get("s3Location") or {}
            if not loc.get("bucket") or not loc.get("key"):
                raise invalid(f"File {f['fileId']} needs an s3Location with bucket and key.")
            self._read(loc["bucket"], loc["key"])  # the object must exist now
        return json.dumps(
            [
                {"fileId": f["fileId"], "s3Location": dict(f["s3Location"])}
                for f in sorted(files, key=lambda f: f["fileId"])
            ]
        )

    def create(self, p: dict[str, Any]) -> dict[str, Any]:
        stream_id = p["streamId"]
        files = self._check_files(p["files"])
        now = self.model.now()
        with self.model.lock, self.model.store.tx() as db:
            if db.execute("SELECT 1 FROM streams WHERE stream_id = ?", (stream_id,)).fetchone():
                raise ApiError(
                    "ResourceAlreadyExistsException", 409, f"Stream {stream_id} already exists."
                )
            db.execute(
                "INSERT INTO streams VALUES (?, ?, ?, ?, 1, ?, ?)",
                (stream_id, p.get("description"), files, p["roleArn"], now, now),
            )
        return self._summary(stream_id, p.get("description"), 1)

    def update(self, p: dict[str, Any]) -> dict[str, Any]:
        stream_id = p["streamId"]
        files = self._check_files(p["files"]) if p.get("files") else None
        with self.model.lock, self.model.store.tx() as db:
            row = self._row(stream_id)
            description = p.get("description", row["description"])
            db.execute(
                "UPDATE streams SET description = ?, files = ?, role_arn = ?,"
                " version = version + 1, updated_at = ? WHERE stream_id = ?",
                (
                    description,
                    files or row["files"],
                    p.get("roleArn") or row["role_arn"],
                    self.model.now(),
                    stream_id,
                ),
            )
            version = int(row["version"]) + 1
        return self._summary(stream_id, description, version)

    def describe(self, stream_id: str) -> dict[str, Any]:
        with self.model.lock:
            row = self._row(stream_id)
        info = {
            "streamId": stream_id,
            "streamArn": stream_arn(stream_id),
            "streamVersion": row["version"],
            "files": json.loads(row["files"]),
            "createdAt": row["created_at"],
            "lastUpdatedAt": row["updated_at"],
            "roleArn": row["role_arn"],
        }
        if row["description"] is not None:
            info["description"] = row["description"]
        return {"streamInfo": info}

    def delete(self, p: dict[str, Any]) -> dict[str, Any]:
        with self.model.lock, self.model.store.tx() as db:
            self._row(p["streamId"])
            db.execute("DELETE FROM streams WHERE stream_id = ?", (p["streamId"],))
        return {}

    def list_streams(self, p: dict[str, Any]) -> dict[str, Any]:
        order = "ASC" if p.get("ascendingOrder") else "DESC"
        with self.model.lock:
            rows = self.model.db.execute(
                f"SELECT * FROM streams ORDER BY created_at {order}, stream_id {order}"
            ).fetchall()
        start = 0
        if p.get("nextToken"):
            try:
                start = int(p["nextToken"])
            except ValueError:
                raise invalid("The nextToken is not valid.") from None
        end = start + (p.get("maxResults") or 250)
        out: dict[str, Any] = {
            "streams": [
                self._summary(r["stream_id"], r["description"], r["version"])
                for r in rows[start:end]
            ]
        }
        if end < len(rows):
            out["nextToken"] = str(end)
        return out

    @staticmethod
    def _summary(stream_id: str, description: str | None, version: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "streamId": stream_id,
            "streamArn": stream_arn(stream_id),
            "streamVersion": version,
        }
        if description is not None:
            out["description"] = description
        return out

    def _row(self, stream_id: str) -> Any:
        row = self.model.db.execute(
            "SELECT * FROM streams WHERE stream_id = ?", (stream_id,)
        ).fetchone()
        if row is None:
            raise not_found(f"Stream {stream_id} does not exist.")
        return row

    def _read(self, bucket: str, key: str) -> bytes:
        if self.fetch_object is None:
            raise ApiError("ServiceUnavailableException", 503, "No object store is running.")
        try:
            return self.fetch_object(bucket, key)
        except KeyError:
            raise invalid(f"s3://{bucket}/{key} cannot be read: no such object") from None

    # ---------------------------------------------------------------- data plane

    def lookup(self, stream_id: str) -> tuple[int, str | None, list[dict[str, Any]]] | None:
        with self.model.lock:
            row = self.model.db.execute(
                "SELECT * FROM streams WHERE stream_id = ?", (stream_id,)
            ).fetchone()
        if row is None:
            return None
        return int(row["version"]), row["description"], json.loads(row["files"])

    def content(self, stream_id: str, version: int, file: dict[str, Any]) -> bytes:
        key = (stream_id, version, int(file["fileId"]))
        with self._cache_lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
                return data
        loc = file["s3Location"]
        data = self._read(loc["bucket"], loc["key"])
        with self._cache_lock:
            self._cache[key] = data
            while len(self._cache) > 8:
                self._cache.popitem(last=False)
        return data


class StreamPlane:
    """The MQTT side of :class:`Streams`: answers describe and get requests."""

    def __init__(
        self,
        streams: Streams,
        *,
        port: int,
        ca_file: Path,
        cert_file: Path,
        key_file: Path,
        client_id: str = "jobs.streams",  # the broker uses the certificate's CN anyway
    ) -> None:
        self.streams = streams
        self.port = port
        self.connected = threading.Event()
        self.blocks_sent = 0
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=str(ca_file), certfile=str(cert_file), keyfile=str(key_file))
        client.max_inflight_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=4)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = lambda *a: self.connected.clear()
        client.on_message = self._on_message
        self.client = client

    def start(self, timeout: float = 15) -> None:
        self.client.connect_async("localhost", self.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.stop()
            raise TimeoutError(f"the stream plane could not connect to localhost:{self.port}")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, p: Any
    ) -> None:
        if not reason.is_failure:
            client.subscribe(
                "$aws/things/+/streams/#", options=SubscribeOptions(qos=1, noLocal=True)
            )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, p: Any
    ) -> None:
        if all(not c.is_failure for c in codes):
            self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.handle(msg.topic, bytes(msg.payload))
        except Exception:
            log.exception("stream plane failed on %s", msg.topic)

    # ---------------------------------------------------------------- requests

    def handle(self, topic: str, payload: bytes) -> None:
        m = _TOPIC.fullmatch(topic)
        if not m:
            return
        thing, stream_id, verb, fmt = m.groups()
        if fmt not in ("json", "cbor") or verb in ("description", "data", "rejected"):
            return  # no answer topic for an unknown format; our own topics carry no requests
        base = f"$aws/things/{thing}/streams/{stream_id}/"
        token = None
        try:
            request = _decode(payload, fmt)
            if isinstance(request, dict) and isinstance(request.get("c"), str):
                token = request["c"]
            if verb not in ("describe", "get"):
                raise StreamError("InvalidTopic", f"Topic {topic} is not a stream API.")
            if not isinstance(request, dict):
                raise StreamError("InvalidRequest", "The request must be a map.")
            if "c" in request:
                c = request["c"]
                if not isinstance(c, str) or len(c.encode()) > TOKEN_MAX:
                    token = None
                    raise StreamError("InvalidRequest", "c must be a string of at most 64 bytes.")
            found = self.streams.lookup(stream_id)
            if found is None:
                raise StreamError("ResourceNotFound", f"Stream {stream_id} does not exist.")
            version, description, files = found
            if verb == "describe":
                body: dict[str, Any] = {"s": version, "r": []}
                for f in files:
                    data = self.streams.content(stream_id, version, f)
                    body["r"].append({"f": f["fileId"], "z": len(data)})
                if description is not None:
                    body["d"] = description
                if token is not None:
                    body["c"] = token
                self._send(base + "description/" + fmt, body, fmt)
                return
            self._get(base, fmt, token, request, stream_id, version, files)
        except StreamError as exc:
            self._reject(base, fmt, token, exc.code, exc.message)
        except ApiError as exc:  # the object behind the stream is gone
            self._reject(base, fmt, token, "ResourceNotFound", exc.message)
        except Exception as exc:
            log.exception("internal error on %s", topic)
            self._reject(base, fmt, token, "InternalError", f"Internal error: {exc!r}")

    def _get(
        self,
        base: str,
        fmt: str,
        token: str | None,
        req: dict[str, Any],
        stream_id: str,
        version: int,
        files: list[dict[str, Any]],
    ) -> None:
        file_id = _int(req, "f", True, 0, 255)
        stream_version = _int(req, "s", False, 0, 2**31)
        size = _int(req, "l", True, BLOCK_MIN, BLOCK_MAX)
        offset = _int(req, "o", False, 0, 2**31)
        count = _int(req, "n", False, 1, 2**31)
        if fmt == "json" and size > BLOCK_MAX_JSON:
            raise StreamError(
                "InvalidRequest",
                f"l {size}: a JSON data message (base64) would exceed 128 KB; use at most"
                f" {BLOCK_MAX_JSON} or cbor.",
            )
        if stream_version is not None and stream_version != version:
            raise StreamError(
                "VersionMismatch",
                f"Stream {stream_id} is at version {version}, not {stream_version}.",
            )
        file = next((f for f in files if f["fileId"] == file_id), None)
        if file is None:
            raise StreamError("ResourceNotFound", f"Stream {stream_id} has no file {file_id}.")
        data = self.streams.content(stream_id, version, file)
        nblocks = max(1, -(-len(data) // size))
        first = offset or 0
        if first >= nblocks:
            raise StreamError(
                "InvalidRequest", f"Block offset {first} is past the file's {nblocks} blocks."
            )
        bitmap = req.get("b")
        if bitmap is not None:
            if count is not None:
                raise StreamError("InvalidRequest", "Give either n or b, not both.")
            raw = _bitmap(bitmap, fmt)
            blocks = [
                first + i
                for i in range(len(raw) * 8)
                if raw[i >> 3] & (1 << (i & 7)) and first + i < nblocks
            ]
        else:
            blocks = list(range(first, min(nblocks, first + (count or 1))))
        for i in blocks:
            chunk = data[i * size : (i + 1) * size]
            body: dict[str, Any] = {"f": file_id, "l": len(chunk), "i": i}
            body["p"] = chunk if fmt == "cbor" else base64.b64encode(chunk).decode()
            if token is not None:
                body["c"] = token
            self._send(base + "data/" + fmt, body, fmt)
            self.blocks_sent += 1

    def _reject(self, base: str, fmt: str, token: str | None, code: str, text: str) -> None:
        body: dict[str, Any] = {"o": code, "m": text}
        if token is not None:
            body["c"] = token
        self._send(base + "rejected/" + fmt, body, fmt)

    def _send(self, topic: str, body: dict[str, Any], fmt: str) -> None:
        payload = cbor2.dumps(body) if fmt == "cbor" else json.dumps(body, separators=(",", ":"))
        self.client.publish(topic, payload, qos=1)


def _decode(payload: bytes, fmt: str) -> Any:
    if fmt == "cbor":
        if not payload:
            return {}
        try:
            return cbor2.loads(payload)
        except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError):
            raise StreamError("InvalidCbor", "The request is not valid CBOR.") from None
    if not payload.strip():
        return {}
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise StreamError("InvalidJson", "The request is not valid UTF-8 JSON.") from None


def _int(req: dict[str, Any], key: str, required: bool, low: int, high: int) -> Any:
    value = req.get(key)
    if value is None:
        if required:
            raise StreamError("InvalidRequest", f"{key} is required.")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise StreamError("InvalidRequest", f"{key} must be an integer {low}-{high}.")
    return value


def _bitmap(value: Any, fmt: str) -> bytes:
    if fmt == "cbor" and isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise StreamError("InvalidRequest", "b must be a base64 bitmap.") from None
    else:
        raise StreamError("InvalidRequest", "b must be a bitmap (bytes in CBOR, base64 in JSON).")
    if not 1 <= len(raw) <= BITMAP_MAX:
        raise StreamError("InvalidRequest", f"b must be 1-{BITMAP_MAX} bytes.")
    return raw
