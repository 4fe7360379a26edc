"""Jobs events as AWS IoT publishes them on the reserved ``$aws/events/`` topics.

- ``$aws/events/job/{jobId}/{completed|canceled|deletion_in_progress|deleted}``
  (``eventType`` ``JOB``: the job's status, targets, times and execution counts)
- ``$aws/events/jobExecution/{jobId}/{succeeded|failed|rejected|canceled|timed_out|removed|
  deleted}`` (``eventType`` ``JOB_EXECUTION``: thing ARN, status, statusDetails)

The model queues them inside an operation and hands them to its ``on_event`` listener after
the transaction commits (nothing is published for a change that was rolled back).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from typing import Any

JOB_OPERATIONS = ("completed", "canceled", "deletion_in_progress", "deleted")
EXECUTION_OPERATIONS = (
    "succeeded",
    "failed",
    "rejected",
    "canceled",
    "timed_out",
    "removed",
    "deleted",
)
_COUNTS = {
    "CANCELED": "numberOfCanceledThings",
    "REJECTED": "numberOfRejectedThings",
    "FAILED": "numberOfFailedThings",
    "REMOVED": "numberOfRemovedThings",
    "SUCCEEDED": "numberOfSucceededThings",
    "TIMED_OUT": "numberOfTimedOutThings",
}

Event = tuple[str, dict[str, Any]]


def _base(event_type: str, operation: str) -> dict[str, Any]:
    return {
        "eventType": event_type,
        "eventId": str(uuid.uuid4()),
        "timestamp": int(time.time()),
        "operation": operation,
    }


def job_event(db: sqlite3.Connection, job: sqlite3.Row, operation: str) -> Event:
    job_id = job["job_id"]
    counts = {name: 0 for name in _COUNTS.values()}
    for r in db.execute(
        "SELECT status, COUNT(*) AS n FROM executions WHERE job_id = ? GROUP BY status", (job_id,)
    ):
        if r["status"] in _COUNTS:
            counts[_COUNTS[r["status"]]] = r["n"]
    body = {
        **_base("JOB", operation),
        "jobId": job_id,
        "status": job["status"],
        "targetSelection": job["target_selection"],
        "targets": json.loads(job["targets"]),
        "description": job["description"],
        "createdAt": int(job["created_at"]),
        "lastUpdatedAt": int(job["updated_at"]),
        "completedAt": int(job["completed_at"]) if job["completed_at"] is not None else None,
        "comment": job["comment"],
        "reasonCode": job["reason_code"],
        "jobProcessDetails": counts,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return f"$aws/events/job/{job_id}/{operation}", body


def execution_event(ex: sqlite3.Row | dict[str, Any], thing_arn: str, operation: str) -> Event:
    body = {
        **_base("JOB_EXECUTION", operation),
        "jobId": ex["job_id"],
        "thingArn": thing_arn,
        "status": ex["status"],
        "statusDetails": json.loads(ex["status_details"]),
    }
    return f"$aws/events/jobExecution/{ex['job_id']}/{operation}", body
