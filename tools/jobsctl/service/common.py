"""Facts every part of the service shares: the account, ARNs, the execution statuses, and the
small helpers of both wire formats (paging, omitted members, time left)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from .errors import invalid

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"

# An execution in one of these never changes again (AWS IoT Jobs' terminal statuses).
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED"})
PENDING = ("IN_PROGRESS", "QUEUED")
# What a device may set (UpdateJobExecution's status).
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


def thing_arn(name: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT_ID}:thing/{name}"


def group_arn(name: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT_ID}:thinggroup/{name}"


def job_arn(job_id: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT_ID}:job/{job_id}"


def opt_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    """A wire object without its absent members (AWS omits them rather than sending null)."""
    return {k: v for k, v in d.items() if v is not None}


def seconds_left(
    status: str, step_deadline: float | None, job_deadline: float | None, now: float
) -> int | None:
    """approximateSecondsBeforeTimedOut: of an IN_PROGRESS execution with a deadline."""
    deadlines = [d for d in (step_deadline, job_deadline) if d is not None]
    if not deadlines or status != "IN_PROGRESS":
        return None
    return max(0, int(min(deadlines) - now))


T = TypeVar("T")


def page(
    rows: Sequence[T], max_results: int | None, token: str | None
) -> tuple[list[T], str | None]:
    """One page of a listing and the nextToken of the next (an offset; 250 a page by default)."""
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
    return list(rows[start:end]), (str(end) if end < len(rows) else None)


# A document parameter's placeholder: ${aws:iot:parameter:NAME}.
PARAM = re.compile(r"\$\{aws:iot:parameter:([a-zA-Z0-9:_-]+)\}")


def substitute_parameters(document: str, parameters: str | None) -> str:
    """The job document with its documentParameters (JSON, or None) filled in."""
    params = opt_json(parameters) or {}
    if not params:
        return document
    return PARAM.sub(lambda m: json.dumps(params[m.group(1)])[1:-1], document)


_S3_URL = re.compile(r"https://s3(?:[.-]([a-z0-9-]+))?\.amazonaws\.com/([^/]+)/(.+)")


def parse_s3_url(url: str) -> tuple[str, str] | None:
    """``https://s3[.region].amazonaws.com/BUCKET/KEY`` -> (bucket, key)."""
    m = _S3_URL.fullmatch(url)
    return (m.group(2), m.group(3)) if m else None
