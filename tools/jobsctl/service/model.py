"""The jobs model: things, groups, jobs and job executions, as AWS IoT Jobs keeps them.

Both planes call this model; it owns every state transition (execution state machine, job
status, rollout, step timeouts, CONTINUOUS targets) and persists each operation as one SQLite
transaction. Control-plane failures raise :class:`ApiError` (the AWS exception name and HTTP
status); data-plane failures raise :class:`JobsError` (the MQTT error codes).
After each operation the things whose pending executions may have changed are handed to
``on_change`` (outside the lock), which the data plane turns into notify/notify-next pushes.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError

from . import policies
from .store import Store

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED"})
PENDING = ("IN_PROGRESS", "QUEUED")
DEVICE_STATUSES = frozenset({"IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"})
EXECUTION_STATUSES = (
    "QUEUED",
    "IN_PROGRESS",
    "SUCCEEDED",
    "FAILED",
    "TIMED_OUT",
    "REJECTED",
    "REMOVED",
    "CANCELED",
)

MAX_DOCUMENT = 32768
UNSUPPORTED_CREATE_JOB = (
    "namespaceId",
    "destinationPackageVersions",
)
# CreateJob settings kept in jobs.extra as given and returned by DescribeJob.
EXTRA_JOB_FIELDS = ("abortConfig", "jobExecutionsRetryConfig", "schedulingConfig", "jobTemplateArn")
_NAME = re.compile(r"[a-zA-Z0-9:_-]+")
_JOB_ID = re.compile(r"[a-zA-Z0-9_-]+")
_ARN = re.compile(r"arn:aws:iot:([a-z0-9-]+):(\d{12}):(thing|thinggroup)/([a-zA-Z0-9:_-]+)")
_PARAM = re.compile(r"\$\{aws:iot:parameter:([a-zA-Z0-9:_-]+)\}")
_S3_URL = re.compile(r"https://s3(?:[.-]([a-z0-9-]+))?\.amazonaws\.com/([^/]+)/(.+)")


class ApiError(Exception):
    """A control-plane error: AWS exception name, HTTP status, message."""

    def __init__(self, name: str, status: int, message: str) -> None:
        super().__init__(message)
        self.name, self.status, self.message = name, status, message


def not_found(message: str) -> ApiError:
    return ApiError("ResourceNotFoundException", 404, message)


def invalid(message: str) -> ApiError:
    return ApiError("InvalidRequestException", 400, message)


class JobsError(Exception):
    """A data-plane error reply: code, message and (for two codes) the execution state."""

    def __init__(self, code: str, message: str, state: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.state = code, message, state


def thing_arn(name: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT_ID}:thing/{name}"


def group_arn(name: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT_ID}:thinggroup/{name}"


def job_arn(job_id: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT_ID}:job/{job_id}"


def has_control_chars(value: str) -> bool:
    return any(unicodedata.category(c).startswith("C") for c in value)


def check_status_details(details: object) -> dict[str, str]:
    """statusDetails per AWS limits; raises JobsError(InvalidRequest)."""
    if not isinstance(details, dict):
        raise JobsError("InvalidRequest", "statusDetails must be an object of strings")
    for key, value in details.items():
        if not (1 <= len(key) <= 128) or not _NAME.fullmatch(key):
            raise JobsError(
                "InvalidRequest",
                f"statusDetails key '{key[:140]}' must be 1-128 characters of [a-zA-Z0-9:_-]",
            )
        if not isinstance(value, str):
            raise JobsError("InvalidRequest", f"statusDetails value of '{key}' must be a string")
        if not (1 <= len(value) <= 1024) or has_control_chars(value):
            raise JobsError(
                "InvalidRequest",
                f"statusDetails value of '{key}' must be 1-1024 characters without control"
                " characters",
            )
    return details


def check_step_timeout(value: object, allow_cancel: bool = False) -> int | None:
    """stepTimeoutInMinutes of a data-plane request; -1 only where ``allow_cancel``."""
    try:
        return policies.check_step_timeout(value, allow_cancel)
    except ValueError as exc:
        raise JobsError("InvalidRequest", str(exc)) from None


def check_job_policies(req: dict[str, Any], now: float) -> None:
    """timeoutConfig, abortConfig, jobExecutionsRetryConfig, schedulingConfig and
    jobExecutionsRolloutConfig beyond their botocore shapes."""
    from . import rollouts

    try:
        policies.check_timeout_config(req.get("timeoutConfig"))
        policies.check_abort_config(req.get("abortConfig"))
        policies.check_retry_config(req.get("jobExecutionsRetryConfig"))
        rollouts.check(req, now)
    except ValueError as exc:
        raise invalid(str(exc)) from None


def parse_s3_url(url: str) -> tuple[str, str] | None:
    """``https://s3[.region].amazonaws.com/BUCKET/KEY`` -> (bucket, key)."""
    m = _S3_URL.fullmatch(url)
    return (m.group(2), m.group(3)) if m else None


def _opt_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class Model:
    """All state transitions of the Jobs service, persisted in a :class:`Store`."""

    def __init__(
        self,
        store: Store,
        *,
        fetch_object: Callable[[str, str], bytes] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.db = store.db
        self.lock = threading.RLock()
        self.on_change: Callable[[set[str]], None] | None = None
        self.fetch_object = fetch_object
        self._clock = clock
        self.skew = 0.0  # tests move time forward instead of waiting minutes
        # CreateJob's quota of active (IN_PROGRESS or SCHEDULED) jobs; None: no limit
        self.max_active_jobs: int | None = None
        # ports of the running stack ("mqtt", "control", "jobs_data"), for DescribeEndpoint
        self.endpoints: dict[str, int] = {}
        self._changed: set[str] = set()
        self._depth = 0
        # Jobs events ($aws/events/...) of the running operation, handed out after its commit
        self.on_event: Callable[[list[tuple[str, dict[str, Any]]]], None] | None = None
        self._events: list[tuple[str, dict[str, Any]]] = []

    def now(self) -> float:
        return self._clock() + self.skew

    # ---------------------------------------------------------------- plumbing

    @contextmanager
    def _op(self) -> Iterator[sqlite3.Connection]:
        """One operation: the lock, one transaction, then change notifications."""
        with self.lock:
            self._depth += 1
            committed = False
            try:
                if self._depth == 1:
                    with self.store.tx() as db:
                        yield db
                else:
                    yield self.db
                committed = True
            finally:
                self._depth -= 1
                changed, fire = self._changed, self._depth == 0
                events: list[tuple[str, dict[str, Any]]] = []
                if fire:
                    self._changed = set()
                    events, self._events = (self._events if committed else []), []
        if fire and changed and self.on_change:
            self.on_change(changed)
        if events and self.on_event:
            self.on_event(events)

    def _job_event(self, job_id: str, operation: str) -> None:
        from . import events

        self._events.append(events.job_event(self.db, self._job(job_id), operation))

    def _touch(self, thing: str) -> None:
        self._changed.add(thing)

    # ---------------------------------------------------------------- things and groups

    def create_thing(self, name: str, attributes: dict[str, str] | None = None) -> dict[str, Any]:
        with self._op() as db:
            row = db.execute("SELECT * FROM things WHERE name = ?", (name,)).fetchone()
            if row is not None:
                if attributes and json.loads(row["attributes"]) != attributes:
                    raise ApiError(
                        "ResourceAlreadyExistsException",
                        409,
                        f"Thing {name} already exists in account with different attributes",
                    )
                thing_id = row["thing_id"]
            else:
                thing_id = str(uuid.uuid4())
                db.execute(
                    "INSERT INTO things VALUES (?, ?, ?, 1, ?)",
                    (name, thing_id, json.dumps(attributes or {}), self.now()),
                )
        return {"thingName": name, "thingArn": thing_arn(name), "thingId": thing_id}

    def _thing(self, name: str) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM things WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise not_found(f"Thing {name} cannot be found.")
        return row

    def thing_exists(self, name: str) -> bool:
        with self.lock:
            return (
                self.db.execute("SELECT 1 FROM things WHERE name = ?", (name,)).fetchone()
                is not None
            )

    def describe_thing(self, name: str) -> dict[str, Any]:
        with self.lock:
            row = self._thing(name)
        return {
            "defaultClientId": name,
            "thingName": name,
            "thingId": row["thing_id"],
            "thingArn": thing_arn(name),
            "attributes": json.loads(row["attributes"]),
            "version": row["version"],
        }

    def list_things(self, max_results: int | None, token: str | None) -> dict[str, Any]:
        with self.lock:
            rows = self.db.execute("SELECT * FROM things ORDER BY name").fetchall()
        page, next_token = _page(rows, max_results, token)
        things = [
            {
                "thingName": r["name"],
                "thingArn": thing_arn(r["name"]),
                "attributes": json.loads(r["attributes"]),
                "version": r["version"],
            }
            for r in page
        ]
        return _drop_none({"things": things, "nextToken": next_token})

    def create_group(self, name: str, description: str | None = None) -> dict[str, Any]:
        with self._op() as db:
            row = db.execute("SELECT * FROM groups WHERE name = ?", (name,)).fetchone()
            if row is not None:
                group_id = row["group_id"]
            else:
                group_id = str(uuid.uuid4())
                db.execute(
                    "INSERT INTO groups VALUES (?, ?, ?, ?)",
                    (name, group_id, description, self.now()),
                )
        return {"thingGroupName": name, "thingGroupArn": group_arn(name), "thingGroupId": group_id}

    def describe_group(self, name: str) -> dict[str, Any]:
        with self.lock:
            row = self.db.execute("SELECT * FROM groups WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise not_found(f"Thing group {name} cannot be found.")
        return _drop_none(
            {
                "thingGroupName": name,
                "thingGroupId": row["group_id"],
                "thingGroupArn": group_arn(name),
                "version": 1,
                "thingGroupProperties": _drop_none({"thingGroupDescription": row["description"]}),
                "thingGroupMetadata": {"creationDate": row["created_at"]},
                "status": "ACTIVE",
            }
        )

    def add_thing_to_group(self, group: str, thing: str) -> None:
        with self._op() as db:
            if db.execute("SELECT 1 FROM groups WHERE name = ?", (group,)).fetchone() is None:
                raise not_found(f"Thing group {group} cannot be found.")
            self._thing(thing)
            cur = db.execute("INSERT OR IGNORE INTO memberships VALUES (?, ?)", (group, thing))
            if cur.rowcount:
                self._continuous_targets(group, thing)

    def add_certificate(self, cert_id: str, thing: str, pem: str) -> None:
        with self._op() as db:
            db.execute(
                "INSERT OR REPLACE INTO certificates VALUES (?, ?, ?, ?)",
                (cert_id, thing, pem, self.now()),
            )

    def _continuous_targets(self, group: str, thing: str) -> None:
        arn = group_arn(group)
        for job in self.db.execute(
            "SELECT * FROM jobs WHERE status = 'IN_PROGRESS' AND target_selection = 'CONTINUOUS'"
        ).fetchall():
            if arn in json.loads(job["targets"]):
                self._target(job, thing)
                self._release(job)

    # ---------------------------------------------------------------- jobs

    def _resolve_targets(self, targets: list[str]) -> list[str]:
        things: list[str] = []
        for target in targets:
            m = _ARN.fullmatch(target)
            if not m:
                raise invalid(f"Target {target} is not a valid thing or thing group ARN.")
            region, account, kind, name = m.groups()
            if region != REGION or account != ACCOUNT_ID:
                raise invalid(f"Target {target} is not in region {REGION}, account {ACCOUNT_ID}.")
            if kind == "thing":
                self._thing(name)
                members = [name]
            else:
                if (
                    self.db.execute("SELECT 1 FROM groups WHERE name = ?", (name,)).fetchone()
                    is None
                ):
                    raise not_found(f"Thing group {name} cannot be found.")
                members = [
                    r["thing"]
                    for r in self.db.execute(
                        "SELECT thing FROM memberships WHERE group_name = ? ORDER BY thing",
                        (name,),
                    )
                ]
            things += [t for t in members if t not in things]
        return things

    def create_job(self, job_id: str, req: dict[str, Any]) -> dict[str, Any]:
        document = req.get("document")
        source = req.get("documentSource")
        if document is not None and source is not None:
            raise invalid("Only one of document and documentSource may be given.")
        if document is None and source is None:
            raise invalid("Either document or documentSource must be given.")
        if source is not None:
            document = self._read_source(source)
        assert document is not None
        if len(document) > MAX_DOCUMENT:
            raise invalid(f"The job document is longer than {MAX_DOCUMENT} characters.")
        try:
            parsed = json.loads(document)
        except ValueError as exc:
            raise invalid(f"The job document is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise invalid("The job document must be a JSON object.")
        params = req.get("documentParameters")
        if params:
            missing = [p for p in _PARAM.findall(document) if p not in params]
            if missing:
                raise invalid(f"documentParameters lacks {', '.join(sorted(set(missing)))}.")
        rollout = req.get("jobExecutionsRolloutConfig")
        for unsupported in UNSUPPORTED_CREATE_JOB:
            if req.get(unsupported) is not None:
                raise invalid(f"{unsupported} is not supported by the local service.")
        check_job_policies(req, self.now())
        timeout = req.get("timeoutConfig") or None
        extra = {k: req[k] for k in EXTRA_JOB_FIELDS if req.get(k) is not None}
        now = self.now()
        with self._op() as db:
            if db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone():
                raise ApiError(
                    "ResourceAlreadyExistsException", 409, f"Job {job_id} already exists."
                )
            self._check_active_jobs()
            things = self._resolve_targets(req["targets"])
            db.execute(
                "INSERT INTO jobs (job_id, document, document_source, description, targets,"
                " target_selection, status, presigned, rollout, document_parameters,"
                " timeout_config, created_at, updated_at, extra)"
                " VALUES (?, ?, ?, ?, ?, ?, 'IN_PROGRESS', ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    document,
                    source,
                    req.get("description"),
                    json.dumps(req["targets"]),
                    req.get("targetSelection") or "SNAPSHOT",
                    json.dumps(req["presignedUrlConfig"]) if "presignedUrlConfig" in req else None,
                    json.dumps(rollout) if rollout else None,
                    json.dumps(params) if params else None,
                    json.dumps(timeout) if timeout else None,
                    now,
                    now,
                    json.dumps(extra),
                ),
            )
            self._set_tags(job_arn(job_id), req.get("tags") or [])
            job = self._job(job_id)
            for thing in things:
                self._target(job, thing)
            self._release(job)
            self._maybe_complete(job_id)
        return _drop_none(
            {"jobArn": job_arn(job_id), "jobId": job_id, "description": req.get("description")}
        )

    def _check_active_jobs(self) -> None:
        limit = self.max_active_jobs
        if limit is None:
            return
        active = self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('IN_PROGRESS', 'SCHEDULED')"
        ).fetchone()[0]
        if active >= limit:
            raise ApiError(
                "LimitExceededException",
                410,
                f"{active} jobs are active (IN_PROGRESS or SCHEDULED): the quota is {limit}."
                " Cancel or complete one first.",
            )

    def _read_source(self, source: str) -> str:
        where = parse_s3_url(source)
        if where is None:
            raise invalid(f"documentSource {source} is not an S3 URL (https://s3.amazonaws.com/..)")
        if self.fetch_object is None:
            raise ApiError("ServiceUnavailableException", 503, "No object store is running.")
        try:
            data = self.fetch_object(*where)
        except KeyError:
            raise invalid(f"documentSource {source} cannot be read: no such object") from None
        except (OSError, BotoCoreError) as exc:
            raise ApiError(
                "ServiceUnavailableException", 503, f"The object store is unavailable: {exc}"
            ) from None
        if len(data) > MAX_DOCUMENT:
            raise invalid(f"The job document is longer than {MAX_DOCUMENT} characters.")
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise invalid("The job document is not UTF-8.") from None

    def _target(self, job: sqlite3.Row, thing: str) -> None:
        """Give ``thing`` an execution of ``job`` now, or when the rollout rate allows."""
        job_id = job["job_id"]
        if self.db.execute(
            "SELECT 1 FROM executions WHERE job_id = ? AND thing = ?"
            " UNION SELECT 1 FROM pending_targets WHERE job_id = ? AND thing = ?",
            (job_id, thing, job_id, thing),
        ).fetchone():
            return
        now = self.now()
        from . import rollouts

        if rollouts.gated(self, job):  # released by _release (rate, schedule, windows)
            self.db.execute("INSERT INTO pending_targets VALUES (?, ?, ?)", (job_id, thing, now))
            return
        self._queue(job_id, thing, now)

    def _release(self, job: sqlite3.Row) -> None:
        from . import rollouts

        if rollouts.gated(self, job):
            rollouts.release(self, job["job_id"], self.now())

    def _queue(self, job_id: str, thing: str, now: float) -> None:
        self.db.execute(
            "INSERT INTO executions (job_id, thing, execution_number, status, version,"
            " status_details, queued_at, updated_at) VALUES (?, ?, 1, 'QUEUED', 1, '{}', ?, ?)",
            (job_id, thing, now, now),
        )
        self._touch(thing)

    def _job(self, job_id: str) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise not_found(f"Job {job_id} cannot be found.")
        return row

    def _process_details(self, job_id: str) -> dict[str, Any]:
        counts = {s: 0 for s in EXECUTION_STATUSES}
        for r in self.db.execute(
            "SELECT status, COUNT(*) AS n FROM executions WHERE job_id = ? GROUP BY status",
            (job_id,),
        ):
            counts[r["status"]] = r["n"]
        names = {
            "CANCELED": "numberOfCanceledThings",
            "SUCCEEDED": "numberOfSucceededThings",
            "FAILED": "numberOfFailedThings",
            "REJECTED": "numberOfRejectedThings",
            "QUEUED": "numberOfQueuedThings",
            "IN_PROGRESS": "numberOfInProgressThings",
            "REMOVED": "numberOfRemovedThings",
            "TIMED_OUT": "numberOfTimedOutThings",
        }
        return {names[s]: counts[s] for s in names}

    def _job_dict(self, row: sqlite3.Row) -> dict[str, Any]:
        job_id = row["job_id"]
        targets = json.loads(row["targets"])
        return _drop_none(
            {
                "jobArn": job_arn(job_id),
                "jobId": job_id,
                "targetSelection": row["target_selection"],
                "status": row["status"],
                "forceCanceled": bool(row["force_canceled"]),
                "reasonCode": row["reason_code"],
                "comment": row["comment"],
                "targets": targets,
                "description": row["description"],
                "presignedUrlConfig": _opt_json(row["presigned"]),
                "jobExecutionsRolloutConfig": _opt_json(row["rollout"]),
                "createdAt": row["created_at"],
                "lastUpdatedAt": row["updated_at"],
                "completedAt": row["completed_at"],
                "jobProcessDetails": {
                    "processingTargets": targets if row["status"] == "IN_PROGRESS" else [],
                    **self._process_details(job_id),
                },
                "documentParameters": _opt_json(row["document_parameters"]),
                "timeoutConfig": _opt_json(row["timeout_config"]),
                "isConcurrent": False,
                **self._extra(row),
                "scheduledJobRollouts": self._scheduled_rollouts(row),
            }
        )

    def _scheduled_rollouts(self, row: sqlite3.Row) -> list[dict[str, str]] | None:
        from . import scheduling

        sched = self._extra(row).get("schedulingConfig")
        if row["status"] not in ("IN_PROGRESS", "SCHEDULED") or not sched:
            return None
        return scheduling.next_rollouts(sched, self.now()) or None

    @staticmethod
    def _extra(row: sqlite3.Row) -> dict[str, Any]:
        """The job's settings kept as given (abortConfig, jobExecutionsRetryConfig, ...)."""
        extra: dict[str, Any] = _opt_json(row["extra"]) or {}
        return extra

    def _set_tags(self, arn: str, tags: list[dict[str, str]]) -> None:
        for tag in tags:
            self.db.execute(
                "INSERT OR REPLACE INTO tags VALUES (?, ?, ?)",
                (arn, tag["Key"], tag.get("Value", "")),
            )

    def describe_job(self, job_id: str) -> dict[str, Any]:
        with self.lock:
            row = self._job(job_id)
            return _drop_none(
                {"documentSource": row["document_source"], "job": self._job_dict(row)}
            )

    def job_document(self, job_id: str, before_substitution: bool = False) -> str:
        with self.lock:
            row = self._job(job_id)
        if before_substitution:
            return str(row["document"])
        return self._substitute_parameters(row)

    @staticmethod
    def _substitute_parameters(row: sqlite3.Row) -> str:
        params = _opt_json(row["document_parameters"]) or {}
        doc = str(row["document"])
        if not params:
            return doc
        return _PARAM.sub(lambda m: json.dumps(params[m.group(1)])[1:-1], doc)

    def list_jobs(
        self,
        status: str | None,
        target_selection: str | None,
        group: str | None,
        max_results: int | None,
        token: str | None,
        group_id: str | None = None,
    ) -> dict[str, Any]:
        with self.lock:
            rows = self.db.execute("SELECT * FROM jobs ORDER BY created_at, job_id").fetchall()
            if group_id:
                named = self.db.execute(
                    "SELECT name FROM groups WHERE group_id = ?", (group_id,)
                ).fetchone()
                if named is None or (group and group != named["name"]):
                    rows = []
                else:
                    group = named["name"]
        if status:
            rows = [r for r in rows if r["status"] == status]
        if target_selection:
            rows = [r for r in rows if r["target_selection"] == target_selection]
        if group:
            rows = [r for r in rows if group_arn(group) in json.loads(r["targets"])]
        page, next_token = _page(rows, max_results, token)
        jobs = [
            _drop_none(
                {
                    "jobArn": job_arn(r["job_id"]),
                    "jobId": r["job_id"],
                    "targetSelection": r["target_selection"],
                    "status": r["status"],
                    "createdAt": r["created_at"],
                    "lastUpdatedAt": r["updated_at"],
                    "completedAt": r["completed_at"],
                    "isConcurrent": False,
                }
            )
            for r in page
        ]
        return _drop_none({"jobs": jobs, "nextToken": next_token})

    def cancel_job(
        self, job_id: str, force: bool, reason_code: str | None, comment: str | None
    ) -> dict[str, Any]:
        with self._op() as db:
            job = self._job(job_id)
            if job["status"] in ("COMPLETED", "DELETION_IN_PROGRESS"):
                raise invalid(f"Job {job_id} is {job['status']} and cannot be canceled.")
            now = self.now()
            statuses = ("QUEUED", "IN_PROGRESS") if force else ("QUEUED",)
            for ex in db.execute(
                f"SELECT * FROM executions WHERE job_id = ? AND status IN"
                f" ({','.join('?' * len(statuses))})",
                (job_id, *statuses),
            ).fetchall():
                self._set_status(ex, "CANCELED", now, force_canceled=force)
            db.execute("DELETE FROM pending_targets WHERE job_id = ?", (job_id,))
            db.execute(
                "UPDATE jobs SET status = 'CANCELED', force_canceled = MAX(force_canceled, ?),"
                " reason_code = COALESCE(?, reason_code), comment = COALESCE(?, comment),"
                " updated_at = ?, completed_at = COALESCE(completed_at, ?) WHERE job_id = ?",
                (int(force), reason_code, comment, now, now, job_id),
            )
            self._job_event(job_id, "canceled")
        return _drop_none(
            {"jobArn": job_arn(job_id), "jobId": job_id, "description": job["description"]}
        )

    def delete_job(self, job_id: str, force: bool) -> None:
        """Mark DELETION_IN_PROGRESS; :meth:`tick` removes the rows."""
        with self._op() as db:
            job = self._job(job_id)
            if job["status"] == "DELETION_IN_PROGRESS":
                return
            if job["status"] == "IN_PROGRESS" and not force:
                raise ApiError(
                    "InvalidStateTransitionException",
                    409,
                    f"Job {job_id} is IN_PROGRESS; delete it with force=true or cancel it first.",
                )
            # A COMPLETED or CANCELED job is deleted without force, even while an execution
            # is still IN_PROGRESS (DeleteJob's API reference): that device can no longer
            # update it.
            for ex in db.execute(
                "SELECT thing FROM executions WHERE job_id = ?", (job_id,)
            ).fetchall():
                self._touch(ex["thing"])
            db.execute(
                "UPDATE jobs SET status = 'DELETION_IN_PROGRESS', updated_at = ? WHERE job_id = ?",
                (self.now(), job_id),
            )
            db.execute("DELETE FROM pending_targets WHERE job_id = ?", (job_id,))
            self._job_event(job_id, "deletion_in_progress")

    # ---------------------------------------------------------------- executions

    def _execution(
        self, thing: str, job_id: str, execution_number: int | None = None
    ) -> sqlite3.Row | None:
        row = self.db.execute(
            "SELECT e.* FROM executions e JOIN jobs j USING (job_id)"
            " WHERE e.thing = ? AND e.job_id = ? AND j.status != 'DELETION_IN_PROGRESS'",
            (thing, job_id),
        ).fetchone()
        if row is None or (
            execution_number is not None and row["execution_number"] != execution_number
        ):
            return None
        return row

    def _seconds_left(self, ex: sqlite3.Row | dict[str, Any]) -> int | None:
        deadlines = [d for d in (ex["step_deadline"], ex["job_deadline"]) if d is not None]
        if not deadlines or ex["status"] != "IN_PROGRESS":
            return None
        return max(0, int(min(deadlines) - self.now()))

    def _exec_control(self, ex: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
        left = self._seconds_left(ex)
        return _drop_none(
            {
                "jobId": ex["job_id"],
                "status": ex["status"],
                "forceCanceled": bool(ex["force_canceled"]),
                "statusDetails": {"detailsMap": json.loads(ex["status_details"])},
                "thingArn": thing_arn(ex["thing"]),
                "queuedAt": ex["queued_at"],
                "startedAt": ex["started_at"],
                "lastUpdatedAt": ex["updated_at"],
                "executionNumber": ex["execution_number"],
                "versionNumber": ex["version"],
                "approximateSecondsBeforeTimedOut": left,
            }
        )

    @staticmethod
    def _summary_control(ex: sqlite3.Row) -> dict[str, Any]:
        return _drop_none(
            {
                "status": ex["status"],
                "queuedAt": ex["queued_at"],
                "startedAt": ex["started_at"],
                "lastUpdatedAt": ex["updated_at"],
                "executionNumber": ex["execution_number"],
            }
        )

    def describe_execution(
        self, thing: str, job_id: str, execution_number: int | None
    ) -> dict[str, Any]:
        with self.lock:
            ex = self._execution(thing, job_id, execution_number)
            if ex is None and execution_number is not None and self._execution(thing, job_id):
                old = self.db.execute(
                    "SELECT row FROM execution_history WHERE job_id = ? AND thing = ?"
                    " AND execution_number = ?",
                    (job_id, thing, execution_number),
                ).fetchone()
                if old is not None:
                    return {"execution": self._exec_control(json.loads(old["row"]))}
            if ex is None:
                raise not_found(f"Job execution of {job_id} on {thing} cannot be found.")
            return {"execution": self._exec_control(ex)}

    def list_executions_for_job(
        self, job_id: str, status: str | None, max_results: int | None, token: str | None
    ) -> dict[str, Any]:
        with self.lock:
            self._job(job_id)
            rows = self.db.execute(
                "SELECT * FROM executions WHERE job_id = ? ORDER BY seq", (job_id,)
            ).fetchall()
        rows = [r for r in rows if not status or r["status"] == status]
        page, next_token = _page(rows, max_results, token)
        summaries = [
            {"thingArn": thing_arn(r["thing"]), "jobExecutionSummary": self._summary_control(r)}
            for r in page
        ]
        return _drop_none({"executionSummaries": summaries, "nextToken": next_token})

    def list_executions_for_thing(
        self,
        thing: str,
        status: str | None,
        job_id: str | None,
        max_results: int | None,
        token: str | None,
    ) -> dict[str, Any]:
        with self.lock:
            self._thing(thing)
            rows = self.db.execute(
                "SELECT e.* FROM executions e JOIN jobs j USING (job_id) WHERE e.thing = ?"
                " AND j.status != 'DELETION_IN_PROGRESS' ORDER BY e.seq",
                (thing,),
            ).fetchall()
        rows = [
            r
            for r in rows
            if (not status or r["status"] == status) and (not job_id or r["job_id"] == job_id)
        ]
        page, next_token = _page(rows, max_results, token)
        summaries = [
            {"jobId": r["job_id"], "jobExecutionSummary": self._summary_control(r)} for r in page
        ]
        return _drop_none({"executionSummaries": summaries, "nextToken": next_token})

    def cancel_execution(
        self,
        thing: str,
        job_id: str,
        force: bool,
        expected_version: int | None,
        details: dict[str, str] | None,
    ) -> None:
        with self._op():
            ex = self._execution(thing, job_id)
            if ex is None:
                raise not_found(f"Job execution of {job_id} on {thing} cannot be found.")
            if expected_version is not None and expected_version != ex["version"]:
                raise ApiError(
                    "VersionConflictException",
                    409,
                    f"expectedVersion {expected_version} does not match {ex['version']}.",
                )
            if ex["status"] in TERMINAL:
                raise ApiError(
                    "InvalidStateTransitionException",
                    409,
                    f"Job execution is {ex['status']} and cannot be canceled.",
                )
            if ex["status"] == "IN_PROGRESS" and not force:
                raise ApiError(
                    "InvalidStateTransitionException",
                    409,
                    "Job execution is IN_PROGRESS; cancel it with force=true.",
                )
            self._set_status(ex, "CANCELED", self.now(), details=details, force_canceled=force)
            self._maybe_complete(job_id)

    def _set_status(
        self,
        ex: sqlite3.Row,
        status: str,
        now: float,
        *,
        details: dict[str, str] | None = None,
        force_canceled: bool = False,
        step_deadline: float | None = None,
        clear_step: bool = False,
    ) -> sqlite3.Row:
        """Set the status; returns the row as the change left it (before a retry re-queues it
        or abort criteria cancel the job)."""
        started = ex["started_at"]
        job_deadline = ex["job_deadline"]
        if status == "IN_PROGRESS" and started is None:
            started = now
            timeout = _opt_json(self._job(ex["job_id"])["timeout_config"]) or {}
            if timeout.get("inProgressTimeoutInMinutes"):
                job_deadline = now + 60.0 * int(timeout["inProgressTimeoutInMinutes"])
        if status != "IN_PROGRESS":
            job_deadline = None
        deadline = ex["step_deadline"]
        if status != "IN_PROGRESS" or clear_step:
            deadline = None
        elif step_deadline is not None:
            deadline = step_deadline
        self.db.execute(
            "UPDATE executions SET status = ?, version = version + 1, started_at = ?,"
            " updated_at = ?, status_details = ?, step_deadline = ?, job_deadline = ?,"
            " force_canceled = MAX(force_canceled, ?) WHERE seq = ?",
            (
                status,
                started,
                now,
                json.dumps(details) if details is not None else ex["status_details"],
                deadline,
                job_deadline,
                int(force_canceled),
                ex["seq"],
            ),
        )
        row = self.db.execute("SELECT * FROM executions WHERE seq = ?", (ex["seq"],)).fetchone()
        if status != ex["status"]:
            self._touch(ex["thing"])
            if status in TERMINAL:
                from . import events

                self._events.append(
                    events.execution_event(row, thing_arn(row["thing"]), status.lower())
                )
                self._ended(row, now)
        return row

    def _ended(self, ex: sqlite3.Row, now: float) -> None:
        """An execution reached a terminal status: retry it, or weigh the abort criteria."""
        job = self._job(ex["job_id"])
        if job["status"] != "IN_PROGRESS":
            return
        extra = self._extra(job)
        allowed, counted = policies.retries_allowed(
            extra.get("jobExecutionsRetryConfig"), ex["status"]
        )
        if allowed:
            used = self.db.execute(
                "SELECT COUNT(*) FROM execution_history WHERE job_id = ? AND thing = ?"
                f" AND json_extract(row, '$.status') IN ({','.join('?' * len(counted))})",
                (ex["job_id"], ex["thing"], *counted),
            ).fetchone()[0]
            if used < allowed:
                self._requeue(ex, now)
                return
        counts = {
            r["status"]: r["n"]
            for r in self.db.execute(
                "SELECT status, COUNT(*) AS n FROM executions WHERE job_id = ? GROUP BY status",
                (ex["job_id"],),
            )
        }
        criterion = policies.abort_criterion(extra.get("abortConfig"), counts)
        if criterion is not None:
            self._abort(job, criterion, sum(counts.values()), now)

    def _requeue(self, ex: sqlite3.Row, now: float) -> None:
        """A retry: the attempt goes to the history, a new execution number is QUEUED."""
        self.db.execute(
            "INSERT OR REPLACE INTO execution_history VALUES (?, ?, ?, ?)",
            (ex["job_id"], ex["thing"], ex["execution_number"], json.dumps(dict(ex))),
        )
        self.db.execute(
            "UPDATE executions SET execution_number = execution_number + 1, status = 'QUEUED',"
            " version = 1, status_details = '{}', queued_at = ?, started_at = NULL,"
            " updated_at = ?, step_deadline = NULL, job_deadline = NULL, force_canceled = 0"
            " WHERE seq = ?",
            (now, now, ex["seq"]),
        )
        self._touch(ex["thing"])

    def _abort(
        self, job: sqlite3.Row, criterion: dict[str, Any], executed: int, now: float
    ) -> None:
        """abortConfig met: the job is CANCELED and its QUEUED executions with it."""
        job_id = job["job_id"]
        for ex in self.db.execute(
            "SELECT * FROM executions WHERE job_id = ? AND status = 'QUEUED'", (job_id,)
        ).fetchall():
            self._set_status(ex, "CANCELED", now)
        self.db.execute("DELETE FROM pending_targets WHERE job_id = ?", (job_id,))
        comment = (
            f"abortConfig: {criterion['failureType']} reached"
            f" {criterion['thresholdPercentage']}% of {executed} executed things"
        )
        self.db.execute(
            "UPDATE jobs SET status = 'CANCELED', reason_code = ?, comment = ?, updated_at = ?,"
            " completed_at = COALESCE(completed_at, ?) WHERE job_id = ?",
            (policies.ABORT_REASON, comment, now, now, job_id),
        )
        self._job_event(job_id, "canceled")

    def _maybe_complete(self, job_id: str) -> None:
        job = self._job(job_id)
        if job["status"] != "IN_PROGRESS" or job["target_selection"] != "SNAPSHOT":
            return
        busy = self.db.execute(
            "SELECT 1 FROM executions WHERE job_id = ? AND status IN ('QUEUED', 'IN_PROGRESS')"
            " UNION SELECT 1 FROM pending_targets WHERE job_id = ?",
            (job_id, job_id),
        ).fetchone()
        if not busy:
            now = self.now()
            self.db.execute(
                "UPDATE jobs SET status = 'COMPLETED', updated_at = ?, completed_at = ?"
                " WHERE job_id = ?",
                (now, now, job_id),
            )
            self._job_event(job_id, "completed")

    # ---------------------------------------------------------------- data plane

    def state_of(self, ex: sqlite3.Row) -> dict[str, Any]:
        """JobExecutionState as the data plane sends it."""
        return {
            "status": ex["status"],
            "statusDetails": json.loads(ex["status_details"]),
            "versionNumber": ex["version"],
        }

    @staticmethod
    def summary_of(ex: sqlite3.Row) -> dict[str, Any]:
        """JobExecutionSummary as the data plane sends it."""
        return _drop_none(
            {
                "jobId": ex["job_id"],
                "queuedAt": int(ex["queued_at"]),
                "startedAt": int(ex["started_at"]) if ex["started_at"] is not None else None,
                "lastUpdatedAt": int(ex["updated_at"]),
                "versionNumber": ex["version"],
                "executionNumber": ex["execution_number"],
            }
        )

    def execution_of(
        self, ex: sqlite3.Row, include_document: bool = True
    ) -> tuple[dict[str, Any], sqlite3.Row]:
        """JobExecution as the data plane sends it, without the document (see handout)."""
        job = self._job(ex["job_id"])
        out = _drop_none(
            {
                "jobId": ex["job_id"],
                "thingName": ex["thing"],
                "status": ex["status"],
                "statusDetails": json.loads(ex["status_details"]),
                "queuedAt": int(ex["queued_at"]),
                "startedAt": int(ex["started_at"]) if ex["started_at"] is not None else None,
                "lastUpdatedAt": int(ex["updated_at"]),
                "versionNumber": ex["version"],
                "executionNumber": ex["execution_number"],
                "approximateSecondsBeforeTimedOut": self._seconds_left(ex),
            }
        )
        if include_document:
            out["jobDocument"] = self._substitute_parameters(job)
        return out, job

    def pending(self, thing: str) -> list[sqlite3.Row]:
        """Pending executions: IN_PROGRESS first, then QUEUED, each oldest first."""
        with self.lock:
            return self.db.execute(
                "SELECT e.* FROM executions e JOIN jobs j USING (job_id) WHERE e.thing = ?"
                " AND e.status IN ('IN_PROGRESS', 'QUEUED') AND j.status != 'DELETION_IN_PROGRESS'"
                " ORDER BY e.status = 'QUEUED', e.queued_at, e.seq",
                (thing,),
            ).fetchall()

    def execution_row(self, thing: str, job_id: str) -> sqlite3.Row | None:
        with self.lock:
            return self._execution(thing, job_id)

    def start_next(
        self, thing: str, details: dict[str, str] | None, step_timeout: int | None
    ) -> sqlite3.Row | None:
        with self._op():
            rows = self.pending(thing)
            if not rows:
                return None
            ex = rows[0]
            if ex["status"] == "QUEUED":
                now = self.now()
                deadline = now + 60 * step_timeout if step_timeout else None
                return self._set_status(
                    ex, "IN_PROGRESS", now, details=details, step_deadline=deadline
                )
            return ex

    def update(
        self,
        thing: str,
        job_id: str,
        status: str,
        details: dict[str, str] | None,
        expected_version: int | None,
        execution_number: int | None,
        step_timeout: int | None,
    ) -> sqlite3.Row:
        with self._op():
            ex = self._execution(thing, job_id, execution_number)
            if ex is None:
                raise JobsError(
                    "ResourceNotFound", f"Job execution of {job_id} on {thing} does not exist."
                )
            if expected_version is not None and expected_version != ex["version"]:
                raise JobsError(
                    "VersionMismatch",
                    f"expectedVersion {expected_version} does not match {ex['version']}",
                    self.state_of(ex),
                )
            if ex["status"] in TERMINAL:
                raise JobsError(
                    "InvalidStateTransition",
                    f"Job execution is {ex['status']} and cannot change to {status}",
                    self.state_of(ex),
                )
            if step_timeout is not None and status != "IN_PROGRESS":
                step_timeout = None
            now = self.now()
            cancel_step = step_timeout == policies.CANCEL_STEP_TIMER
            row = self._set_status(
                ex,
                status,
                now,
                details=details,
                step_deadline=now + 60 * step_timeout if step_timeout and not cancel_step else None,
                clear_step=cancel_step,
            )
            self._maybe_complete(job_id)
            return row

    # ---------------------------------------------------------------- timers

    def tick(self) -> float | None:
        """Step timeouts, rollout releases, deletions. Returns the next deadline (or None)."""
        with self._op() as db:
            now = self.now()
            for ex in db.execute(
                "SELECT * FROM executions WHERE status = 'IN_PROGRESS'"
                " AND (step_deadline <= ? OR job_deadline <= ?)",
                (now, now),
            ).fetchall():
                self._set_status(ex, "TIMED_OUT", now)
                self._maybe_complete(ex["job_id"])
            from . import rollouts

            for job_id in rollouts.due(self, now):
                rollouts.release(self, job_id, now)
            for job in db.execute(
                "SELECT job_id FROM jobs WHERE status = 'DELETION_IN_PROGRESS'"
            ).fetchall():
                self._job_event(job["job_id"], "deleted")
                db.execute("DELETE FROM executions WHERE job_id = ?", (job["job_id"],))
                db.execute("DELETE FROM jobs WHERE job_id = ?", (job["job_id"],))
            nxt = db.execute(
                "SELECT MIN(t) FROM (SELECT MIN(step_deadline) AS t FROM executions"
                " WHERE status = 'IN_PROGRESS' UNION ALL SELECT MIN(job_deadline) FROM executions"
                " WHERE status = 'IN_PROGRESS' UNION ALL SELECT MIN(release_at) FROM"
                " pending_targets)"
            ).fetchone()[0]
        return None if nxt is None else float(nxt) - self.skew


def _page(
    rows: list[sqlite3.Row], max_results: int | None, token: str | None
) -> tuple[list[sqlite3.Row], str | None]:
    start = 0
    if token:
        try:
            start = int(token)
        except ValueError:
            raise invalid("The nextToken is not valid.") from None
        if not 0 <= start <= len(rows):
            raise invalid("The nextToken is not valid.")
    size = max_results or 250
    end = start + size
    return rows[start:end], (str(end) if end < len(rows) else None)
