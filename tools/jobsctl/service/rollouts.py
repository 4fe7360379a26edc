"""Releasing a job's targets as executions: rollout rates, scheduling and maintenance windows.

A job with a rollout or scheduling configuration keeps its targets in ``pending_targets`` and
:func:`release` turns them into QUEUED executions when :mod:`.scheduling` allows: after the
start time, inside a maintenance window, within the per-minute rate. At the end time the job's
``endBehavior`` applies (:func:`end`). The model calls these inside its operations and from its
timer (``tick``), with its own clock.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING, Any

from . import scheduling

if TYPE_CHECKING:
    from .model import Model

ACTIVE = ("IN_PROGRESS", "SCHEDULED")


def gated(model: Model, job: sqlite3.Row) -> bool:
    """Whether the job's targets wait in pending_targets (rollout or scheduling)."""
    return bool(job["rollout"]) or bool(model._extra(job).get("schedulingConfig"))


def check(req: dict[str, Any], now: float) -> None:
    """schedulingConfig and jobExecutionsRolloutConfig of CreateJob/UpdateJob; ValueError."""
    scheduling.check(req.get("schedulingConfig"), now)
    scheduling.check_rollout(req.get("jobExecutionsRolloutConfig"))


def _status(model: Model, job: sqlite3.Row, now: float) -> str:
    sched = model._extra(job).get("schedulingConfig") or {}
    start = sched.get("startTime")
    if start and scheduling.parse_time(start, "startTime") > now:
        return "SCHEDULED"
    return "IN_PROGRESS"


def release(model: Model, job_id: str, now: float) -> None:
    """Queue what the job's schedule and rate allow now; set when to look again."""
    db = model.db
    job = model._job(job_id)
    if job["status"] not in ACTIVE:
        db.execute("DELETE FROM pending_targets WHERE job_id = ?", (job_id,))
        return
    status = _status(model, job, now)
    if status != job["status"]:
        db.execute(
            "UPDATE jobs SET status = ?, updated_at = ? WHERE job_id = ?", (status, now, job_id)
        )
    sched = model._extra(job).get("schedulingConfig") or {}
    gate = scheduling.release_time(sched, now)
    if gate is None:
        ends = scheduling.parse_time(sched["endTime"], "endTime") if sched.get("endTime") else None
        if ends is not None and now < ends:  # no window opens before the end: wait for it
            db.execute("UPDATE pending_targets SET release_at = ? WHERE job_id = ?", (ends, job_id))
            return
        end(model, job_id, now)
        return
    if gate > now:
        db.execute("UPDATE pending_targets SET release_at = ? WHERE job_id = ?", (gate, job_id))
        return
    rollout = json.loads(job["rollout"]) if job["rollout"] else None
    while True:
        pending = [
            r["thing"]
            for r in db.execute(
                "SELECT thing FROM pending_targets WHERE job_id = ? ORDER BY rowid", (job_id,)
            )
        ]
        if not pending:
            return
        counts = {
            r["status"]: r["n"]
            for r in db.execute(
                "SELECT status, COUNT(*) AS n FROM executions WHERE job_id = ? GROUP BY status",
                (job_id,),
            )
        }
        rate = scheduling.rate_per_minute(rollout, sum(counts.values()), counts.get("SUCCEEDED", 0))
        recent = [
            r["queued_at"]
            for r in db.execute(
                "SELECT queued_at FROM executions WHERE job_id = ? AND execution_number = 1"
                " AND queued_at > ? ORDER BY queued_at",
                (job_id, now - 60),
            )
        ]
        allowed = len(pending) if rate is None else max(0, rate - len(recent))
        if allowed == 0:
            again = (recent[0] if recent else now) + 60
            db.execute(
                "UPDATE pending_targets SET release_at = ? WHERE job_id = ?", (again, job_id)
            )
            return
        for thing in pending[:allowed]:
            db.execute(
                "DELETE FROM pending_targets WHERE job_id = ? AND thing = ?", (job_id, thing)
            )
            model._queue(job_id, thing, now)


def end(model: Model, job_id: str, now: float) -> None:
    """The schedule's endTime passed: no more executions; endBehavior CANCEL or FORCE_CANCEL
    cancels the job (QUEUED executions, and with FORCE_CANCEL IN_PROGRESS ones too)."""
    model.db.execute("DELETE FROM pending_targets WHERE job_id = ?", (job_id,))
    job = model._job(job_id)
    if job["status"] not in ACTIVE:
        return
    behavior = (model._extra(job).get("schedulingConfig") or {}).get("endBehavior")
    if behavior in ("CANCEL", "FORCE_CANCEL"):
        model.cancel_job(
            job_id,
            behavior == "FORCE_CANCEL",
            None,
            f"schedulingConfig: endTime reached ({behavior})",
        )
        return
    if job["status"] == "SCHEDULED":
        model.db.execute(
            "UPDATE jobs SET status = 'IN_PROGRESS', updated_at = ? WHERE job_id = ?",
            (now, job_id),
        )
    model._maybe_complete(job_id)


def due(model: Model, now: float) -> list[str]:
    """Jobs the timer must look at now: pending targets due, scheduled starts, ended
    schedules."""
    db = model.db
    ids = [
        r["job_id"]
        for r in db.execute(
            "SELECT DISTINCT job_id FROM pending_targets WHERE release_at <= ?"
            " UNION SELECT job_id FROM jobs WHERE status = 'SCHEDULED'",
            (now,),
        )
    ]
    for job in db.execute(
        "SELECT * FROM jobs WHERE status IN ('IN_PROGRESS', 'SCHEDULED')"
        " AND extra LIKE '%\"endTime\"%'"
    ).fetchall():
        sched = model._extra(job).get("schedulingConfig") or {}
        ended = sched.get("endTime") and scheduling.parse_time(sched["endTime"], "endTime") <= now
        if ended and job["job_id"] not in ids:
            ids.append(job["job_id"])
    return ids
