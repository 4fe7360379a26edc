"""Job operations beyond create/cancel/delete: UpdateJob, AssociateTargetsWithJob and
DeleteJobExecution, with the rules of the AWS IoT API reference. Each is one model operation
(one transaction under the model's lock)."""

from __future__ import annotations

import json
from typing import Any

from . import events, policies
from .common import TERMINAL, job_arn, thing_arn
from .common import drop_none as _drop_none
from .errors import ApiError, invalid, not_found
from .model import Model
from .validate import check_job_policies

# AssociateTargetsWithJob: "The total number of targets associated with a job must not exceed
# 100."
MAX_JOB_TARGETS = 100

_UPDATABLE = {
    "description": "description",
    "presignedUrlConfig": "presigned",
    "jobExecutionsRolloutConfig": "rollout",
    "timeoutConfig": "timeout_config",
}
_UPDATABLE_EXTRA = ("abortConfig", "jobExecutionsRetryConfig")


def update_job(model: Model, job_id: str, req: dict[str, Any]) -> dict[str, Any]:
    """UpdateJob: description, presigned URL, rollout, abort, timeout and retry settings."""
    check_job_policies(req, model.now())
    with model._op() as db:
        job = model._job(job_id)
        if job["status"] == "DELETION_IN_PROGRESS":
            raise invalid(f"Job {job_id} is being deleted.")
        for field, column in _UPDATABLE.items():
            value = req.get(field)
            if value is None:
                continue
            stored = value if isinstance(value, str) else json.dumps(value)
            db.execute(f"UPDATE jobs SET {column} = ? WHERE job_id = ?", (stored, job_id))
        extra = model._extra(job)
        extra.update({k: req[k] for k in _UPDATABLE_EXTRA if req.get(k) is not None})
        db.execute(
            "UPDATE jobs SET extra = ?, updated_at = ? WHERE job_id = ?",
            (json.dumps(extra), model.now(), job_id),
        )
        if req.get("abortConfig") and job["status"] == "IN_PROGRESS":
            _weigh_abort(model, job_id, req["abortConfig"])
    return {}


def _weigh_abort(model: Model, job_id: str, config: dict[str, Any]) -> None:
    """New abort criteria apply to the executions as they already are."""
    counts = {
        r["status"]: r["n"]
        for r in model.db.execute(
            "SELECT status, COUNT(*) AS n FROM executions WHERE job_id = ? GROUP BY status",
            (job_id,),
        )
    }
    criterion = policies.abort_criterion(config, counts)
    if criterion is not None:
        model._abort(model._job(job_id), criterion, sum(counts.values()), model.now())


def associate_targets(
    model: Model, job_id: str, targets: list[str], comment: str | None
) -> dict[str, Any]:
    """AssociateTargetsWithJob: more targets for an IN_PROGRESS CONTINUOUS job."""
    with model._op() as db:
        job = model._job(job_id)
        if job["target_selection"] != "CONTINUOUS":
            raise invalid(f"Job {job_id} is not CONTINUOUS: only continuous jobs take targets.")
        if job["status"] != "IN_PROGRESS":
            raise invalid(
                f"Job {job_id} is {job['status']}: targets can be added only while"
                " it is IN_PROGRESS."
            )
        current: list[str] = json.loads(job["targets"])
        added = [t for t in targets if t not in current]
        if len(current) + len(added) > MAX_JOB_TARGETS:
            raise ApiError(
                "LimitExceededException",
                410,
                f"A job has at most {MAX_JOB_TARGETS} targets; {job_id} would have"
                f" {len(current) + len(added)}.",
            )
        things = model._resolve_targets(added) if added else []
        db.execute(
            "UPDATE jobs SET targets = ?, comment = COALESCE(?, comment), updated_at = ?"
            " WHERE job_id = ?",
            (json.dumps(current + added), comment, model.now(), job_id),
        )
        job = model._job(job_id)
        for thing in things:
            model._target(job, thing)
        model._release(job)
    return _drop_none(
        {"jobArn": job_arn(job_id), "jobId": job_id, "description": job["description"]}
    )


def delete_execution(
    model: Model, job_id: str, thing: str, number: int, force: bool
) -> dict[str, Any]:
    """DeleteJobExecution: a terminal execution, or with force an IN_PROGRESS one."""
    with model._op() as db:
        model._job(job_id)
        ex = model._execution(thing, job_id)
        if ex is not None and ex["execution_number"] == number:
            if ex["status"] not in TERMINAL and not force:
                raise ApiError(
                    "InvalidStateTransitionException",
                    409,
                    f"The job execution is {ex['status']}: only a terminal one is deleted"
                    " without force=true.",
                )
            db.execute("DELETE FROM executions WHERE seq = ?", (ex["seq"],))
            model._events.append(events.execution_event(ex, thing_arn(thing), "deleted"))
            model._touch(thing)
            model._maybe_complete(job_id)
            return {}
        cur = db.execute(
            "DELETE FROM execution_history WHERE job_id = ? AND thing = ? AND execution_number = ?",
            (job_id, thing, number),
        )
        if not cur.rowcount:
            raise not_found(f"Job execution {number} of {job_id} on {thing} cannot be found.")
    return {}
