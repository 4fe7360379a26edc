"""The data plane's wire view of an execution: what ``get``, ``start-next``, ``describe``,
``update`` and the ``notify`` pushes carry (MQTT and HTTPS alike: times as whole epoch
seconds, absent members left out). Plain values in (:class:`~.model.Execution`), dicts out."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .common import drop_none, seconds_left

if TYPE_CHECKING:
    from .model import Execution


def state(ex: Execution) -> dict[str, Any]:
    """JobExecutionState."""
    return {
        "status": ex.status,
        "statusDetails": json.loads(ex.status_details),
        "versionNumber": ex.version,
    }


def summary(ex: Execution) -> dict[str, Any]:
    """JobExecutionSummary (get, notify)."""
    return drop_none(
        {
            "jobId": ex.job_id,
            "queuedAt": int(ex.queued_at),
            "startedAt": int(ex.started_at) if ex.started_at is not None else None,
            "lastUpdatedAt": int(ex.updated_at),
            "versionNumber": ex.version,
            "executionNumber": ex.execution_number,
        }
    )


def execution(ex: Execution, clock: Callable[[], float]) -> dict[str, Any]:
    """JobExecution, without its jobDocument (the data plane hands that out itself); the
    ``clock`` is read only for an execution with a deadline."""
    left = None
    if ex.step_deadline is not None or ex.job_deadline is not None:
        left = seconds_left(ex.status, ex.step_deadline, ex.job_deadline, clock())
    return drop_none(
        {
            "jobId": ex.job_id,
            "thingName": ex.thing,
            "status": ex.status,
            "statusDetails": json.loads(ex.status_details),
            "queuedAt": int(ex.queued_at),
            "startedAt": int(ex.started_at) if ex.started_at is not None else None,
            "lastUpdatedAt": int(ex.updated_at),
            "versionNumber": ex.version,
            "executionNumber": ex.execution_number,
            "approximateSecondsBeforeTimedOut": left,
        }
    )
