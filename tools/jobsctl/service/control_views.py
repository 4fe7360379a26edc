"""The control plane's wire view of jobs and executions: what DescribeJob, ListJobs,
GetJobDocument, DescribeJobExecution and ListJobExecutionsFor{Job,Thing} answer (REST-JSON,
times as epoch seconds, absent members left out). Reads under the model's lock; no writes."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from . import fleet
from .common import (
    EXECUTION_STATUSES,
    drop_none,
    group_arn,
    job_arn,
    opt_json,
    page,
    seconds_left,
    substitute_parameters,
    thing_arn,
)
from .errors import not_found
from .model import Model

# DescribeJob's jobProcessDetails member for each execution status.
_COUNT_NAMES = {
    "CANCELED": "numberOfCanceledThings",
    "SUCCEEDED": "numberOfSucceededThings",
    "FAILED": "numberOfFailedThings",
    "REJECTED": "numberOfRejectedThings",
    "QUEUED": "numberOfQueuedThings",
    "IN_PROGRESS": "numberOfInProgressThings",
    "REMOVED": "numberOfRemovedThings",
    "TIMED_OUT": "numberOfTimedOutThings",
}


def process_details(db: sqlite3.Connection, job_id: str) -> dict[str, Any]:
    counts = {s: 0 for s in EXECUTION_STATUSES}
    for r in db.execute(
        "SELECT status, COUNT(*) AS n FROM executions WHERE job_id = ? GROUP BY status",
        (job_id,),
    ):
        counts[r["status"]] = r["n"]
    return {name: counts[s] for s, name in _COUNT_NAMES.items()}


def job(model: Model, row: sqlite3.Row) -> dict[str, Any]:
    """A job as DescribeJob's ``job`` member (the caller holds the model's lock)."""
    job_id = row["job_id"]
    targets = json.loads(row["targets"])
    return drop_none(
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
            "presignedUrlConfig": opt_json(row["presigned"]),
            "jobExecutionsRolloutConfig": opt_json(row["rollout"]),
            "createdAt": row["created_at"],
            "lastUpdatedAt": row["updated_at"],
            "completedAt": row["completed_at"],
            "jobProcessDetails": {
                "processingTargets": targets if row["status"] == "IN_PROGRESS" else [],
                **process_details(model.db, job_id),
            },
            "documentParameters": opt_json(row["document_parameters"]),
            "timeoutConfig": opt_json(row["timeout_config"]),
            "isConcurrent": False,
            **model._extra(row),
            "scheduledJobRollouts": _scheduled_rollouts(model, row),
        }
    )


def _scheduled_rollouts(model: Model, row: sqlite3.Row) -> list[dict[str, str]] | None:
    from . import scheduling

    sched = model._extra(row).get("schedulingConfig")
    if row["status"] not in ("IN_PROGRESS", "SCHEDULED") or not sched:
        return None
    return scheduling.next_rollouts(sched, model.now()) or None


def describe_job(model: Model, job_id: str) -> dict[str, Any]:
    with model.lock:
        row = model._job(job_id)
        return drop_none({"documentSource": row["document_source"], "job": job(model, row)})


def job_document(model: Model, job_id: str, before_substitution: bool = False) -> str:
    with model.lock:
        row = model._job(job_id)
    if before_substitution:
        return str(row["document"])
    return substitute_parameters(str(row["document"]), row["document_parameters"])


def list_jobs(
    model: Model,
    status: str | None,
    target_selection: str | None,
    group: str | None,
    max_results: int | None,
    token: str | None,
    group_id: str | None = None,
) -> dict[str, Any]:
    with model.lock:
        rows = model.db.execute("SELECT * FROM jobs ORDER BY created_at, job_id").fetchall()
        if group_id:
            named = model.db.execute(
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
    shown, next_token = page(rows, max_results, token)
    jobs = [
        drop_none(
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
        for r in shown
    ]
    return drop_none({"jobs": jobs, "nextToken": next_token})


def execution(ex: sqlite3.Row | Mapping[str, Any], now: float) -> dict[str, Any]:
    """DescribeJobExecution's ``execution`` (a row, or an earlier attempt from the history)."""
    left = seconds_left(ex["status"], ex["step_deadline"], ex["job_deadline"], now)
    return drop_none(
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


def summary(ex: sqlite3.Row | Mapping[str, Any]) -> dict[str, Any]:
    """A JobExecutionSummary of the control plane's listings."""
    return drop_none(
        {
            "status": ex["status"],
            "queuedAt": ex["queued_at"],
            "startedAt": ex["started_at"],
            "lastUpdatedAt": ex["updated_at"],
            "executionNumber": ex["execution_number"],
        }
    )


def describe_execution(
    model: Model, thing: str, job_id: str, execution_number: int | None
) -> dict[str, Any]:
    with model.lock:
        ex = model._execution(thing, job_id, execution_number)
        if ex is None and execution_number is not None and model._execution(thing, job_id):
            old = model.db.execute(
                "SELECT row FROM execution_history WHERE job_id = ? AND thing = ?"
                " AND execution_number = ?",
                (job_id, thing, execution_number),
            ).fetchone()
            if old is not None:
                return {"execution": execution(json.loads(old["row"]), model.now())}
        if ex is None:
            raise not_found(f"Job execution of {job_id} on {thing} cannot be found.")
        return {"execution": execution(ex, model.now())}


def list_executions_for_job(
    model: Model, job_id: str, status: str | None, max_results: int | None, token: str | None
) -> dict[str, Any]:
    with model.lock:
        model._job(job_id)
        rows = model.db.execute(
            "SELECT * FROM executions WHERE job_id = ? ORDER BY seq", (job_id,)
        ).fetchall()
    rows = [r for r in rows if not status or r["status"] == status]
    shown, next_token = page(rows, max_results, token)
    summaries = [
        {"thingArn": thing_arn(r["thing"]), "jobExecutionSummary": summary(r)} for r in shown
    ]
    return drop_none({"executionSummaries": summaries, "nextToken": next_token})


def list_executions_for_thing(
    model: Model,
    thing: str,
    status: str | None,
    job_id: str | None,
    max_results: int | None,
    token: str | None,
) -> dict[str, Any]:
    with model.lock:
        fleet.thing_row(model.db, thing)
        rows = model.db.execute(
            "SELECT e.* FROM executions e JOIN jobs j USING (job_id) WHERE e.thing = ?"
            " AND j.status != 'DELETION_IN_PROGRESS' ORDER BY e.seq",
            (thing,),
        ).fetchall()
    rows = [
        r
        for r in rows
        if (not status or r["status"] == status) and (not job_id or r["job_id"] == job_id)
    ]
    shown, next_token = page(rows, max_results, token)
    summaries = [{"jobId": r["job_id"], "jobExecutionSummary": summary(r)} for r in shown]
    return drop_none({"executionSummaries": summaries, "nextToken": next_token})
