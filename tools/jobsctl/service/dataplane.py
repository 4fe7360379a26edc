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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from .model import (
    DEVICE_STATUSES,
    JobsError,
    Model,
    check_status_details,
    check_step_timeout,
    parse_s3_url,
)

log = logging.getLogger("jobsctl.dataplane")

_PREFIX = "$aws/things/"
_TOPIC = re.compile(r"\$aws/things/([^/]+)/jobs/(.+)")
_JOB_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_THING = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_PRESIGNED = re.compile(r"\$\{aws:iot:s3-presigned-url(?:-v2)?:([^}\s\"]+)\}")
_UPDATE_KEYS = {
    "status",
    "statusDetails",
    "expectedVersion",
    "executionNumber",
    "includeJobExecutionState",
    "includeJobDocument",
    "stepTimeoutInMinutes",
    "clientToken",
}

Presigner = Callable[[str, str, int], str]

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
        client_id: str = "jobs-service",
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
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.tls_set(ca_certs=str(ca_file), certfile=str(cert_file), keyfile=str(key_file))
        client.max_inflight_messages_set(0)  # unlimited: replies must never wait on acks
        client.reconnect_delay_set(min_delay=1, max_delay=4)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client

    # ---------------------------------------------------------------- connection

    def start(self, timeout: float = 15) -> None:
        self.client.connect_async("localhost", self.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.stop()
            raise TimeoutError(f"the data plane could not connect to localhost:{self.port}")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
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
        self._local.deferred = set()
        try:
            self._dispatch(msg.topic, bytes(msg.payload))
        except Exception:
            log.exception("data plane failed on %s", msg.topic)
        finally:
            deferred, self._local.deferred = self._local.deferred, None
            if deferred:
                self.notify(deferred)

    def _dispatch(self, topic: str, payload: bytes) -> None:
        m = _TOPIC.fullmatch(topic)
        if not m:
            return
        thing, rest = m.groups()
        if rest in ("notify", "notify-next") or rest.endswith(("/accepted", "/rejected")):
            return  # the service's own topics: a device has nothing to say there
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
        except (ValueError, UnicodeDecodeError):
            return self._reject(topic, None, "InvalidJson", "The request is not valid UTF-8 JSON.")
        if isinstance(request, dict) and isinstance(request.get("clientToken"), str):
            token = request["clientToken"]
        try:
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
            if "clientToken" in request and not isinstance(request["clientToken"], str):
                raise JobsError("InvalidRequest", "clientToken must be a string.")
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
        except JobsError as exc:
            return self._reject(topic, token, exc.code, exc.message, exc.state)
        except Exception as exc:
            log.exception("internal error on %s", topic)
            return self._reject(topic, token, "InternalError", f"Internal error: {exc!r}")
        reply["timestamp"] = int(time.time())
        if token is not None:
            reply["clientToken"] = token
        self._publish(topic + "/accepted", reply)

    def _fault(self, thing: str, job_id: str | None, code: str) -> JobsError:
        state = None
        if code in ("VersionMismatch", "InvalidStateTransition"):
            row = None
            if job_id and job_id != "$next":
                row = self.model.execution_row(thing, job_id)
            else:
                rows = self.model.pending(thing)
                row = rows[0] if rows else None
            state = self.model.state_of(row) if row is not None else None
        return JobsError(code, f"Injected fault: {code}", state)

    def _reject(
        self,
        topic: str,
        token: str | None,
        code: str,
        text: str,
        state: dict[str, Any] | None = None,
    ) -> None:
        body: dict[str, Any] = {"code": code, "message": text}
        if token is not None:
            body["clientToken"] = token
        body["timestamp"] = int(time.time())
        if state is not None and code in ("InvalidStateTransition", "VersionMismatch"):
            body["executionState"] = state
        self._publish(topic + "/rejected", body)

    def _publish(self, topic: str, body: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(body, separators=(",", ":")), qos=1)

    def _get(self, thing: str) -> dict[str, Any]:
        rows = self.model.pending(thing)
        return {
            "inProgressJobs": [self.model.summary_of(r) for r in rows if r["status"] != "QUEUED"],
            "queuedJobs": [self.model.summary_of(r) for r in rows if r["status"] == "QUEUED"],
        }

    def _start_next(self, thing: str, request: dict[str, Any]) -> dict[str, Any]:
        details = request.get("statusDetails")
        if details is not None:
            details = check_status_details(details)
        step = check_step_timeout(request.get("stepTimeoutInMinutes"))
        row = self.model.start_next(thing, details, step)
        if row is None:
            return {}
        return {"execution": self._execution(row, True)}

    def _describe(self, thing: str, job_id: str, request: dict[str, Any]) -> dict[str, Any]:
        number = request.get("executionNumber")
        if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
            raise JobsError("InvalidRequest", "executionNumber must be an integer.")
        include = request.get("includeJobDocument", True)
        if not isinstance(include, bool):
            raise JobsError("InvalidRequest", "includeJobDocument must be a boolean.")
        if job_id == "$next":
            rows = self.model.pending(thing)
            if not rows:
                return {}
            row = rows[0]
        else:
            found = self.model.execution_row(thing, job_id)
            if found is None or (number is not None and found["execution_number"] != number):
                raise JobsError(
                    "ResourceNotFound", f"Job execution of {job_id} on {thing} does not exist."
                )
            if found["status"] in (
                "SUCCEEDED",
                "FAILED",
                "REJECTED",
                "CANCELED",
                "TIMED_OUT",
                "REMOVED",
            ):
                raise JobsError(
                    "TerminalStateReached",
                    f"Job execution of {job_id} on {thing} is {found['status']}.",
                )
            row = found
        return {"execution": self._execution(row, include)}

    def _update(self, thing: str, job_id: str, request: dict[str, Any]) -> dict[str, Any]:
        if job_id == "$next":
            raise JobsError("InvalidRequest", "$next is valid only for get.")
        unknown = set(request) - _UPDATE_KEYS
        if unknown:
            raise JobsError("InvalidRequest", f"Unknown field {sorted(unknown)[0]}.")
        status = request.get("status")
        if status is None:
            raise JobsError("InvalidRequest", "status is required.")
        if status not in DEVICE_STATUSES:
            raise JobsError(
                "InvalidRequest",
                f"status {str(status)[:40]} is not one of IN_PROGRESS, SUCCEEDED, FAILED,"
                " REJECTED.",
            )
        details = request.get("statusDetails")
        if details is not None:
            details = check_status_details(details)
        for key in ("expectedVersion", "executionNumber"):
            value = request.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise JobsError("InvalidRequest", f"{key} must be an integer.")
        for key in ("includeJobExecutionState", "includeJobDocument"):
            if not isinstance(request.get(key, False), bool):
                raise JobsError("InvalidRequest", f"{key} must be a boolean.")
        step = check_step_timeout(request.get("stepTimeoutInMinutes"), allow_cancel=True)
        row = self.model.update(
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
            reply["executionState"] = self.model.state_of(row)
        if request.get("includeJobDocument"):
            execution = self._execution(row, True)
            reply["jobDocument"] = execution["jobDocument"]
        return reply

    # ---------------------------------------------------------------- documents

    def _execution(self, row: Any, include_document: bool) -> dict[str, Any]:
        with self.model.lock:
            out, job = self.model.execution_of(row, include_document)
        if include_document:
            out["jobDocument"] = self.handout(out["jobDocument"], job["presigned"])
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

    def on_change(self, things: set[str]) -> None:
        """Model listener: push now, or after the reply when inside a request."""
        deferred = getattr(self._local, "deferred", None)
        if deferred is not None:
            deferred.update(things)
        else:
            self.notify(things)

    def notify(self, things: set[str]) -> None:
        for thing in sorted(things):
            try:
                self._notify_one(thing)
            except Exception:
                log.exception("notify of %s failed", thing)

    def _notify_one(self, thing: str) -> None:
        with self._notify_lock:
            rows = self.model.pending(thing)
            now = int(time.time())
            # added to or removed from, or an execution moved QUEUED -> IN_PROGRESS
            listing = tuple(sorted((r["job_id"], r["status"]) for r in rows))
            if self._last_list.get(thing) != listing:
                self._last_list[thing] = listing
                jobs: dict[str, list[dict[str, Any]]] = {}
                for r in rows:
                    jobs.setdefault(r["status"], []).append(self.model.summary_of(r))
                self._publish(f"{_PREFIX}{thing}/jobs/notify", {"timestamp": now, "jobs": jobs})
            key = (rows[0]["job_id"], rows[0]["execution_number"]) if rows else None
            if self._last_next.get(thing, "unset") != key:
                self._last_next[thing] = key
                body: dict[str, Any] = {"timestamp": now}
                if rows:
                    body["execution"] = self._execution(rows[0], True)
                self._publish(f"{_PREFIX}{thing}/jobs/notify-next", body)
