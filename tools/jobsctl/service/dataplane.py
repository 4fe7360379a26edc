"""The data plane: AWS IoT Jobs' MQTT device API, as a privileged client of the broker.

Subscribes to ``$aws/things/+/jobs/#`` (MQTT 5, no-local, so its own replies do not come
back) and answers ``get``, ``start-next``, ``{jobId}/get`` (``$next`` too) and
``{jobId}/update`` on the request topic + ``/accepted`` or ``/rejected`` (QoS 1), and pushes
``notify``/``notify-next`` when a thing's pending executions change. Reconnects by itself
when the broker restarts.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..broker import MAX_PACKET_SIZE
from . import data_views, validate
from .common import TERMINAL, parse_s3_url
from .errors import JobsError
from .model import Execution, Model

log = logging.getLogger("jobsctl.dataplane")

_PREFIX = "$aws/things/"
_TOPIC = re.compile(r"\$aws/things/([^/]+)/jobs/(.+)")
_JOB_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_THING = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_PRESIGNED = re.compile(r"\$\{aws:iot:s3-presigned-url(?:-v2)?:([^}\s\"]+)\}")
Presigner = Callable[[str, str, int], str]
Reply = tuple[str, dict[str, Any]]

# Requests handled in one SQLite transaction, at most: the network thread takes what it has
# read (up to this many), answers each in its own savepoint, commits once, then writes the
# replies. Under load this turns hundreds of commits per second into a few; alone, a request
# is a batch of one and waits for nothing.
BATCH_MAX = 64

# AWS's limits on what the data plane takes and gives: a clientToken of 1-64 characters
# (REFERENCE §1), and at most 10 executions in a GetPendingJobExecutions reply or a
# ListNotification (AWS IoT Jobs limits, without scheduling configuration).
TOKEN_MAX = 64
PENDING_MAX = 10
# Fixed header (5), topic length (2), packet id (2), MQTT 5 properties (1): what a PUBLISH
# adds to its topic and payload.
_PUBLISH_OVERHEAD = 10

# A message body as the service sends it: compact JSON, by one encoder made once (json.dumps
# with separators= would build an encoder for every message).
to_json = json.JSONEncoder(separators=(",", ":")).encode

# Requests per second per thing (token bucket, burst = rate) beyond which the data plane
# answers RequestThrottled; 0 turns throttling off.
DEFAULT_THROTTLE_PER_SECOND = 20.0


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class DataPlane:
    def __init__(
        self,
        model: Model,
        *,
        host: str,
        port: int,
        ca_file: Path,
        cert_file: Path,
        key_file: Path,
        presign: Presigner | None = None,
        throttle_per_second: float | None = None,
        client_id: str = "jobs.service",  # the broker uses the certificate's CN anyway
    ) -> None:
        self.model = model
        self.host, self.port = host, port
        self.presign = presign
        self.throttle_per_second = throttle_per_second
        self._buckets: dict[str, _Bucket] = {}
        self._faults: dict[tuple[str, str], list[str]] = {}
        self._faults_lock = threading.Lock()
        self._last_next: dict[str, object] = {}
        self._last_list: dict[str, object] = {}
        self._notify_lock = threading.Lock()
        self._local = threading.local()
        self.connected = threading.Event()
        self.handled = 0
        self._inbox: list[tuple[str, bytes]] = []
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self.dropped = 0  # replies too large to deliver
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=str(ca_file), certfile=str(cert_file), keyfile=str(key_file))
        client.max_inflight_messages_set(0)  # unlimited: replies must never wait on acks
        client.reconnect_delay_set(min_delay=1, max_delay=4)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = _no_delay
        # Every write happens on the network thread (in loop()): a publish from another
        # thread (a control-plane notify, a Jobs event) is queued and wakes it.
        client.on_socket_register_write = _later
        self.client = client

    # ---------------------------------------------------------------- connection

    def start(self, timeout: float = 15) -> None:
        self._stopping.clear()
        self.client.connect_async("localhost", self.port, keepalive=30)
        self._worker = threading.Thread(target=self._run, name="jobs-data-plane", daemon=True)
        self._worker.start()
        if not self.connected.wait(timeout):
            self.stop()
            raise TimeoutError(f"the data plane could not connect to localhost:{self.port}")

    def stop(self) -> None:
        self._stopping.set()
        self.client.disconnect()  # queued (and wakes the network thread), which sends it
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        self.connected.clear()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("data plane connect refused: %s", reason)
            return
        client.subscribe("$aws/things/+/jobs/#", options=SubscribeOptions(qos=1, noLocal=True))

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, props: Any
    ) -> None:
        if all(not c.is_failure for c in codes):
            self.connected.set()  # connected *and* subscribed: requests are heard from now on
        else:
            log.error("the broker refused the data plane's subscription: %s", codes)

    def _on_disconnect(self, *args: Any) -> None:
        self.connected.clear()

    # ---------------------------------------------------------------- faults and throttling

    def inject_fault(self, thing: str, operation: str, code: str, times: int = 1) -> None:
        with self._faults_lock:
            self._faults.setdefault((thing, operation), []).extend([code] * times)

    def _take_fault(self, thing: str, operation: str) -> str | None:
        with self._faults_lock:
            queue = self._faults.get((thing, operation))
            return queue.pop(0) if queue else None

    def _throttled(self, thing: str) -> bool:
        rate = self.throttle_per_second
        if rate is None:
            rate = DEFAULT_THROTTLE_PER_SECOND
        if rate <= 0:
            return False
        now = time.monotonic()
        burst = max(1.0, rate)
        b = self._buckets.get(thing)
        if b is None:
            b = self._buckets[thing] = _Bucket(burst, now)
        b.tokens = min(burst, b.tokens + (now - b.stamp) * rate)
        b.stamp = now
        if b.tokens < 1.0:
            return True
        b.tokens -= 1.0
        return False

    # ---------------------------------------------------------------- requests

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Called by paho while it reads, on the network thread: the request waits in the
        # inbox until the packets at hand are read, then the batch is answered (in order).
        self._inbox.append((msg.topic, bytes(msg.payload)))

    def _run(self) -> None:
        """The network thread: one thread reads the requests, answers them and writes the
        replies (paho's loop() in our own loop), so that no request crosses threads and no
        reply waits for another thread to be scheduled. Reconnects as paho's loop_forever
        would (1 s, doubling to 4 s)."""
        client = self.client
        delay = 1.0
        while True:
            if self._stopping.is_set():
                if client.socket() is not None:  # stop() raced a reconnect: say goodbye
                    client.disconnect()
                    for _ in range(20):
                        if client.loop(0.05) != mqtt.MQTT_ERR_SUCCESS or not client.socket():
                            break
                return
            if client.socket() is None:
                try:
                    client.reconnect()
                except OSError as exc:
                    log.debug("data plane connect failed: %s", exc)
                    self._stopping.wait(delay)
                    delay = min(delay * 2, 4.0)
                    continue
                delay = 1.0
            try:
                rc = client.loop(timeout=1.0)
            except Exception:  # as paho's own thread would die of it; this one waits, goes on
                log.exception("data plane network loop failed")
                rc = mqtt.MQTT_ERR_UNKNOWN
            if self._inbox:
                try:
                    self._answer_all()
                except Exception:  # the thread must live on: the next requests need it
                    log.exception("data plane failed to answer what it read")
            if rc != mqtt.MQTT_ERR_SUCCESS and not self._stopping.is_set():
                self.connected.clear()
                self._stopping.wait(delay)
                delay = min(delay * 2, 4.0)

    def _answer_all(self) -> None:
        """Answer what has been read, batch by batch, each batch's replies written as soon as
        it is committed (not after the next batch)."""
        while self._inbox:
            batch, self._inbox = self._inbox[:BATCH_MAX], self._inbox[BATCH_MAX:]
            self._answer(batch)
            self.client.loop_write()

    def _answer(self, batch: list[tuple[str, bytes]]) -> None:
        """One batch: each request in its savepoint, one commit, then the replies in order,
        then the pushes the batch caused (notify after the reply, as before)."""
        self._local.deferred = set()
        replies: list[Reply | None] = []
        try:
            with self.model.batch():
                for topic, payload in batch:
                    replies.append(self._handle(topic, payload))
        except Exception:
            log.exception("data plane batch of %d failed to commit", len(batch))
            replies = [
                self._reject(
                    r[0].rpartition("/")[0], None, "InternalError", "The request was not stored."
                )
                for r in replies
                if r is not None
            ]
        finally:
            deferred, self._local.deferred = self._local.deferred, None
        for reply in replies:
            if reply is not None:
                self._publish(*reply)
        if deferred:
            self.notify(deferred)

    def _handle(self, topic: str, payload: bytes) -> Reply | None:
        try:
            return self._dispatch(topic, payload)
        except Exception:
            log.exception("data plane failed on %s", topic)
            return None

    def _dispatch(self, topic: str, payload: bytes) -> Reply | None:
        """The reply to one request (topic and body), or None for what gets none."""
        m = _TOPIC.fullmatch(topic)
        if not m:
            return None
        thing, rest = m.groups()
        if rest in ("notify", "notify-next") or rest.endswith(("/accepted", "/rejected")):
            return None  # the service's own topics: a device has nothing to say there
        self.handled += 1
        if rest == "get":
            op, job_id = "get", None
        elif rest == "start-next":
            op, job_id = "start-next", None
        elif rest.count("/") == 1 and rest.endswith(("/get", "/update")):
            job_id, _, verb = rest.partition("/")
            op = "describe" if verb == "get" else "update"
        else:
            return self._reject(topic, None, "InvalidTopic", f"Topic {topic} is not a Jobs API.")
        token: str | None = None
        try:
            request = json.loads(payload) if payload.strip() else {}
        except (ValueError, UnicodeDecodeError, RecursionError):
            return self._reject(topic, None, "InvalidJson", "The request is not valid UTF-8 JSON.")
        # Echoed only when valid: a reply must never carry what an attacker sized.
        sent = request.get("clientToken") if isinstance(request, dict) else None
        if isinstance(sent, str) and 0 < len(sent) <= TOKEN_MAX:
            token = sent
        try:
            with self.model.request():  # a rejected request's writes are rolled back
                reply = self._operate(thing, op, job_id, request)
        except JobsError as exc:
            return self._reject(topic, token, exc.code, exc.message, exc.state)
        except Exception as exc:
            log.exception("internal error on %s", topic)
            return self._reject(topic, token, "InternalError", f"Internal error: {exc!r}")
        reply["timestamp"] = int(time.time())
        if token is not None:
            reply["clientToken"] = token
        return topic + "/accepted", reply

    def _operate(self, thing: str, op: str, job_id: str | None, request: Any) -> dict[str, Any]:
        if self._throttled(thing):
            raise JobsError("RequestThrottled", "Too many requests from this thing.")
        fault = self._take_fault(thing, op)
        if fault:
            raise self._fault(thing, job_id, fault)
        if not isinstance(request, dict):
            raise JobsError("InvalidRequest", "The request must be a JSON object.")
        if not _THING.fullmatch(thing):
            raise JobsError("InvalidRequest", f"Thing name {thing[:140]} is not valid.")
        if job_id is not None and job_id != "$next" and not _JOB_ID.fullmatch(job_id):
            raise JobsError("InvalidRequest", f"Job id {job_id[:80]} is not valid.")
        sent = request.get("clientToken", "")
        if "clientToken" in request and not (isinstance(sent, str) and 0 < len(sent) <= TOKEN_MAX):
            raise JobsError(
                "InvalidRequest", f"clientToken must be a string of 1-{TOKEN_MAX} characters."
            )
        if op == "get":
            reply = self._get(thing)
        elif op == "start-next":
            reply = self._start_next(thing, request)
        elif op == "describe":
            assert job_id is not None
            reply = self._describe(thing, job_id, request)
        else:
            assert job_id is not None
            reply = self._update(thing, job_id, request)
        return reply

    def _fault(self, thing: str, job_id: str | None, code: str) -> JobsError:
        state = None
        if code in ("VersionMismatch", "InvalidStateTransition"):
            ex = None
            if job_id and job_id != "$next":
                ex = self.model.execution(thing, job_id)
            else:
                pending = self.model.pending(thing)
                ex = pending[0] if pending else None
            state = data_views.state(ex) if ex is not None else None
        return JobsError(code, f"Injected fault: {code}", state)

    def _reject(
        self,
        topic: str,
        token: str | None,
        code: str,
        text: str,
        state: dict[str, Any] | None = None,
    ) -> Reply:
        body: dict[str, Any] = {"code": code, "message": text}
        if token is not None:
            body["clientToken"] = token
        body["timestamp"] = int(time.time())
        if state is not None and code in ("InvalidStateTransition", "VersionMismatch"):
            body["executionState"] = state
        return topic + "/rejected", body

    def _publish(self, topic: str, body: dict[str, Any]) -> None:
        payload = to_json(body).encode()
        size = len(payload) + len(topic.encode()) + _PUBLISH_OVERHEAD
        if size > MAX_PACKET_SIZE:
            # The broker would drop the service's connection for it, and paho would send it
            # again at every reconnect: nobody would get a reply any more. Drop it here.
            log.error(
                "dropped a reply of %d bytes on %s: larger than the broker's %d",
                size,
                topic,
                MAX_PACKET_SIZE,
            )
            self.dropped += 1
            return
        self.client.publish(topic, payload, qos=1)

    def _get(self, thing: str) -> dict[str, Any]:
        pending = self.model.pending(thing)[:PENDING_MAX]
        return {
            "inProgressJobs": [data_views.summary(e) for e in pending if e.status != "QUEUED"],
            "queuedJobs": [data_views.summary(e) for e in pending if e.status == "QUEUED"],
        }

    def _start_next(self, thing: str, request: dict[str, Any]) -> dict[str, Any]:
        details, step = validate.start_next_request(request)
        ex = self.model.start_next(thing, details, step)
        if ex is None:
            return {}
        return {"execution": self._execution(ex, True)}

    def _describe(self, thing: str, job_id: str, request: dict[str, Any]) -> dict[str, Any]:
        number, include = validate.describe_request(request)
        if job_id == "$next":
            pending = self.model.pending(thing)
            if not pending:
                return {}
            ex = pending[0]
        else:
            found = self.model.execution(thing, job_id)
            if found is None or (number is not None and found.execution_number != number):
                raise JobsError(
                    "ResourceNotFound", f"Job execution of {job_id} on {thing} does not exist."
                )
            if found.status in TERMINAL:
                raise JobsError(
                    "TerminalStateReached",
                    f"Job execution of {job_id} on {thing} is {found.status}.",
                )
            ex = found
        return {"execution": self._execution(ex, include)}

    def _update(self, thing: str, job_id: str, request: dict[str, Any]) -> dict[str, Any]:
        if job_id == "$next":
            raise JobsError("InvalidRequest", "$next is valid only for get.")
        status, details, step = validate.update_request(request)
        ex = self.model.update(
            thing,
            job_id,
            status,
            details,
            request.get("expectedVersion"),
            request.get("executionNumber"),
            step,
        )
        reply: dict[str, Any] = {}
        if request.get("includeJobExecutionState"):
            reply["executionState"] = data_views.state(ex)
        if request.get("includeJobDocument"):
            document, presigned = self.model.document(ex)
            reply["jobDocument"] = self.handout(document, presigned)
        return reply

    # ---------------------------------------------------------------- documents

    def _execution(self, ex: Execution, include_document: bool) -> dict[str, Any]:
        out = data_views.execution(ex, self.model.now)
        if include_document:
            document, presigned = self.model.document(ex)
            out["jobDocument"] = self.handout(document, presigned)
        return out

    def handout(self, document: str, presigned: str | None) -> Any:
        """The document as a device gets it: pre-signed URL placeholders freshly signed."""
        expires = 3600
        if presigned:
            expires = int(json.loads(presigned).get("expiresInSec") or 3600)

        def sign(m: re.Match[str]) -> str:
            where = parse_s3_url(m.group(1))
            if where is None or self.presign is None:
                return m.group(0)
            return self.presign(where[0], where[1], expires)

        return json.loads(_PRESIGNED.sub(sign, document))

    # ---------------------------------------------------------------- pushes

    def on_change(self, things: set[str]) -> bool:
        """Model listener: push now, or after the reply when inside a request (then True:
        the change came from a device's request)."""
        deferred = getattr(self._local, "deferred", None)
        if deferred is not None:
            deferred.update(things)
            return True
        self.notify(things)
        return False

    def notify(self, things: set[str]) -> None:
        for thing in sorted(things):
            try:
                self._notify_one(thing)
            except Exception:
                log.exception("notify of %s failed", thing)

    def _notify_one(self, thing: str) -> None:
        with self._notify_lock:
            pending = self.model.pending(thing)
            now = int(time.time())
            # added to or removed from, or an execution moved QUEUED -> IN_PROGRESS
            listing = tuple(sorted((e.job_id, e.status) for e in pending))
            if self._last_list.get(thing) != listing:
                self._last_list[thing] = listing
                jobs: dict[str, list[dict[str, Any]]] = {}
                for e in pending[:PENDING_MAX]:
                    jobs.setdefault(e.status, []).append(data_views.summary(e))
                self._publish(f"{_PREFIX}{thing}/jobs/notify", {"timestamp": now, "jobs": jobs})
            key = (pending[0].job_id, pending[0].execution_number) if pending else None
            if self._last_next.get(thing, "unset") != key:
                self._last_next[thing] = key
                body: dict[str, Any] = {"timestamp": now}
                if pending:
                    body["execution"] = self._execution(pending[0], True)
                self._publish(f"{_PREFIX}{thing}/jobs/notify-next", body)


def _later(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    pass  # paho's own wake-up (its socket pair) brings the network thread to the write


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # A reply is one small packet: sent now, not after the broker's delayed ACK (Nagle).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
