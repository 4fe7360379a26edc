"""The jobs model's transitions: jobs and job executions, as AWS IoT Jobs moves them.

Both planes call this model; it owns every state transition (execution state machine, job
status, rollout, step timeouts, CONTINUOUS targets) and persists each operation as one SQLite
transaction, under one lock. Around it: the registry of things and groups (:mod:`.fleet`),
validation (:mod:`.validate`), and the wire views of each plane (:mod:`.control_views`,
:mod:`.data_views`). The data plane gets :class:`Execution` values, never rows or the lock.
Control-plane failures raise :class:`ApiError` (the AWS exception name and HTTP status);
data-plane failures raise :class:`JobsError` (the MQTT error codes), both in :mod:`.errors`.
After each operation the things whose pending executions may have changed are handed to
``on_change`` (outside the lock), which the data plane turns into notify/notify-next pushes.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from botocore.exceptions import BotoCoreError

from . import events, fleet, policies, rollouts, validate
from .common import (
    ACCOUNT_ID,
    REGION,
    TERMINAL,
    group_arn,
    job_arn,
    opt_json,
    parse_s3_url,
    substitute_parameters,
    thing_arn,
)
from .common import drop_none as _drop_none
from .data_views import state
from .errors import ApiError, JobsError, invalid, not_found
from .store import Store
from .validate import MAX_DOCUMENT

# CreateJob settings kept in jobs.extra as given and returned by DescribeJob.
EXTRA_JOB_FIELDS = ("abortConfig", "jobExecutionsRetryConfig", "schedulingConfig", "jobTemplateArn")
_ARN = re.compile(r"arn:aws:iot:([a-z0-9-]+):(\d{12}):(thing|thinggroup)/([a-zA-Z0-9:_-]+)")


class Execution(NamedTuple):
    """A job execution as the data plane gets it: plain values, no database row. The fields
    are the executions table's columns in their order (checked when a Model opens a store)."""

    seq: int
    job_id: str
    thing: str
    execution_number: int
    status: str
    version: int
    status_details: str  # JSON
    queued_at: float
    started_at: float | None
    updated_at: float
    step_deadline: float | None
    job_deadline: float | None
    force_canceled: int

    @classmethod
    def of(cls, row: sqlite3.Row) -> Execution:
        return cls._make(row)  # a row of executions (SELECT e.*): the columns above, in order


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
        columns = tuple(r["name"] for r in self.db.execute("PRAGMA table_info(executions)"))
        if columns != Execution._fields:  # Execution.of maps a row by position
            raise RuntimeError(f"executions has columns {columns}, Execution {Execution._fields}")
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

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Several operations in one transaction (the data plane's batch of requests): the lock
        and the transaction are held across them; each runs in its own :meth:`request`."""
        with self._op():
            yield

    @contextmanager
    def request(self) -> Iterator[None]:
        """One request inside a :meth:`batch`: a savepoint, so that a request that fails undoes
        its own writes and events and nothing of the others'."""
        with self.lock:
            self.db.execute("SAVEPOINT request")
            events = len(self._events)
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK TO request")
                self.db.execute("RELEASE request")
                del self._events[events:]
                raise
            self.db.execute("RELEASE request")

    def _job_event(self, job_id: str, operation: str) -> None:
        self._events.append(events.job_event(self.db, self._job(job_id), operation))

    def _touch(self, thing: str) -> None:
        self._changed.add(thing)

    def _thing(self, name: str) -> sqlite3.Row:
        return fleet.thing_row(self.db, name)

    # ---------------------------------------------------------------- targets

    def joined_group(self, group: str, thing: str) -> None:
        """``thing`` became a member of ``group`` (inside the registry's operation): it becomes
        a target of the group's IN_PROGRESS CONTINUOUS jobs."""
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
        params = req.get("documentParameters")
        validate.check_job_document(document, params)
        rollout = req.get("jobExecutionsRolloutConfig")
        validate.check_create_job(req, self.now())
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
        if rollouts.gated(self, job):  # released by _release (rate, schedule, windows)
            self.db.execute("INSERT INTO pending_targets VALUES (?, ?, ?)", (job_id, thing, now))
            return
        self._queue(job_id, thing, now)

    def _release(self, job: sqlite3.Row) -> None:
        if rollouts.gated(self, job):
            rollouts.release(self, job["job_id"], self.now())

    def _queue(self, job_id: str, thing: str, now: float) -> None:
        self.db.execute(
            "INSERT INTO executions (job_id, thing, execution_number, status, version,"
            " status_details, queued_at, updated_at) VALUES (?, ?, 1, 'QUEUED', 1, '{}', ?, ?)",
            (job_id, thing, now, now),
        )
        self._touch(thing)

    def _job(self, job_id: str, columns: str = "*") -> sqlite3.Row:
        """The job's row, or the ``columns`` (constant SQL, e.g. ``"status, extra"``) that a
        per-request path needs: not the document it would not read."""
        row = self.db.execute(f"SELECT {columns} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise not_found(f"Job {job_id} cannot be found.")
        return row

    @staticmethod
    def _extra(row: sqlite3.Row) -> dict[str, Any]:
        """The job's settings kept as given (abortConfig, jobExecutionsRetryConfig, ...)."""
        extra: dict[str, Any] = opt_json(row["extra"]) or {}
        return extra

    def _set_tags(self, arn: str, tags: list[dict[str, str]]) -> None:
        for tag in tags:
            self.db.execute(
                "INSERT OR REPLACE INTO tags VALUES (?, ?, ?)",
                (arn, tag["Key"], tag.get("Value", "")),
            )

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
            timeout = opt_json(self._job(ex["job_id"], "timeout_config")["timeout_config"]) or {}
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
                self._events.append(
                    events.execution_event(row, thing_arn(row["thing"]), status.lower())
                )
                self._ended(row, now)
        return row

    def _ended(self, ex: sqlite3.Row, now: float) -> None:
        """An execution reached a terminal status: retry it, or weigh the abort criteria."""
        job = self._job(ex["job_id"], "job_id, status, extra")
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
        if not extra.get("abortConfig"):
            return  # no criteria to weigh: no count (an O(executions) query per update)
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
        job = self._job(job_id, "status, target_selection")
        if job["status"] != "IN_PROGRESS" or job["target_selection"] != "SNAPSHOT":
            return
        # Two index lookups (executions_job_status, pending_targets' key), not a scan of the
        # job's executions: the cost of an update does not grow with the fleet.
        busy = self.db.execute(
            "SELECT 1 FROM executions WHERE job_id = ? AND status = 'QUEUED'"
            " UNION ALL SELECT 1 FROM executions WHERE job_id = ? AND status = 'IN_PROGRESS'"
            " UNION ALL SELECT 1 FROM pending_targets WHERE job_id = ? LIMIT 1",
            (job_id, job_id, job_id),
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
    # What the data plane calls: Execution values in and out, the lock taken here.

    def _pending(self, thing: str) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT e.* FROM executions e JOIN jobs j USING (job_id) WHERE e.thing = ?"
            " AND e.status IN ('IN_PROGRESS', 'QUEUED') AND j.status != 'DELETION_IN_PROGRESS'"
            " ORDER BY e.status = 'QUEUED', e.queued_at, e.seq",
            (thing,),
        ).fetchall()

    def pending(self, thing: str) -> list[Execution]:
        """Pending executions: IN_PROGRESS first, then QUEUED, each oldest first."""
        with self.lock:
            return [Execution.of(r) for r in self._pending(thing)]

    def execution(self, thing: str, job_id: str) -> Execution | None:
        with self.lock:
            row = self._execution(thing, job_id)
        return None if row is None else Execution.of(row)

    def document(self, ex: Execution) -> tuple[str, str | None]:
        """The execution's job document as a device gets it (documentParameters filled in)
        and the job's presignedUrlConfig (JSON, or None)."""
        with self.lock:
            job = self._job(ex.job_id, "document, document_parameters, presigned")
        document = substitute_parameters(str(job["document"]), job["document_parameters"])
        return document, job["presigned"]

    def start_next(
        self, thing: str, details: dict[str, str] | None, step_timeout: int | None
    ) -> Execution | None:
        with self._op():
            rows = self._pending(thing)
            if not rows:
                return None
            ex = rows[0]
            if ex["status"] == "QUEUED":
                now = self.now()
                deadline = now + 60 * step_timeout if step_timeout else None
                ex = self._set_status(
                    ex, "IN_PROGRESS", now, details=details, step_deadline=deadline
                )
            return Execution.of(ex)

    def update(
        self,
        thing: str,
        job_id: str,
        status: str,
        details: dict[str, str] | None,
        expected_version: int | None,
        execution_number: int | None,
        step_timeout: int | None,
    ) -> Execution:
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
                    state(Execution.of(ex)),
                )
            if ex["status"] in TERMINAL:
                raise JobsError(
                    "InvalidStateTransition",
                    f"Job execution is {ex['status']} and cannot change to {status}",
                    state(Execution.of(ex)),
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
            if status in TERMINAL:  # an execution left IN_PROGRESS or QUEUED keeps it busy
                self._maybe_complete(job_id)
            return Execution.of(row)

    # ---------------------------------------------------------------- timers

    def tick(self) -> float | None:
        """Step timeouts, rollout releases, deletions. Returns the next deadline (or None)."""
        with self._op() as db:
            now = self.now()
            # Each half by its partial index (store: executions_step_deadline, _job_deadline;
            # an ORDER BY in SQL would make it a scan of every execution instead).
            due = db.execute(
                "SELECT * FROM executions WHERE status = 'IN_PROGRESS' AND step_deadline <= ?"
                " UNION SELECT * FROM executions WHERE status = 'IN_PROGRESS'"
                " AND job_deadline <= ?",
                (now, now),
            ).fetchall()
            for ex in sorted(due, key=lambda row: row["seq"]):
                self._set_status(ex, "TIMED_OUT", now)
                self._maybe_complete(ex["job_id"])
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
                " WHERE status = 'IN_PROGRESS' AND step_deadline IS NOT NULL"
                " UNION ALL SELECT MIN(job_deadline) FROM executions"
                " WHERE status = 'IN_PROGRESS' AND job_deadline IS NOT NULL"
                " UNION ALL SELECT MIN(release_at) FROM pending_targets)"
            ).fetchone()[0]
        return None if nxt is None else float(nxt) - self.skew
