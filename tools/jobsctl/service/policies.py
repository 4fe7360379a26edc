"""Job policies as AWS IoT Jobs applies them: timeouts, abort criteria, retries.

Pure functions over the configuration objects of CreateJob/UpdateJob (shapes as botocore's
``iot`` model has them) and over counts the model gathers; the model calls them as executions
change and acts on the answers. Limits the botocore model does not carry (it has no range for
``inProgressTimeoutInMinutes``, no decimal rule for ``thresholdPercentage``) come from the AWS IoT
developer guide and API reference. The checks raise ValueError with the message for the
caller's error (InvalidRequestException, or the data plane's InvalidRequest).
"""

from __future__ import annotations

from typing import Any

# TimeoutConfig.inProgressTimeoutInMinutes and the data plane's stepTimeoutInMinutes: 1 minute
# to 7 days. UpdateJobExecution also takes -1: cancel the running step timer.
TIMEOUT_MIN, TIMEOUT_MAX = 1, 10080
CANCEL_STEP_TIMER = -1
# Retries of one execution, all failure types together (JobExecutionsRetryConfig).
MAX_RETRIES = 10
# The job's reasonCode when its abortConfig canceled it (CancelJob's pattern: [A-Z0-9_]+).
ABORT_REASON = "ABORT_CRITERIA_MET"

FAILURES = {
    "FAILED": ("FAILED",),
    "REJECTED": ("REJECTED",),
    "TIMED_OUT": ("TIMED_OUT",),
    "ALL": ("FAILED", "REJECTED", "TIMED_OUT"),
}


def check_timeout_config(config: dict[str, Any] | None) -> None:
    minutes = (config or {}).get("inProgressTimeoutInMinutes")
    if minutes is not None and not TIMEOUT_MIN <= minutes <= TIMEOUT_MAX:
        raise ValueError(
            f"timeoutConfig.inProgressTimeoutInMinutes must be {TIMEOUT_MIN}-{TIMEOUT_MAX}"
            f" (1 minute to 7 days), not {minutes}."
        )


def check_abort_config(config: dict[str, Any] | None) -> None:
    if config is None:
        return
    seen: set[str] = set()
    for c in config["criteriaList"]:
        pct = c["thresholdPercentage"]
        if not 0 <= pct <= 100 or round(pct, 2) != pct:
            raise ValueError(
                f"abortConfig thresholdPercentage {pct} must be 0-100 with at most two digits"
                " after the decimal point."
            )
        if c["failureType"] in seen:
            raise ValueError(f"abortConfig names failureType {c['failureType']} twice.")
        seen.add(c["failureType"])


def check_retry_config(config: dict[str, Any] | None) -> None:
    if config is None:
        return
    types = [c["failureType"] for c in config["criteriaList"]]
    if len(set(types)) != len(types):
        raise ValueError("jobExecutionsRetryConfig names a failureType twice.")
    if "ALL" in types and len(types) > 1:
        raise ValueError(
            "jobExecutionsRetryConfig: ALL cannot be combined with another failureType."
        )
    total = sum(c["numberOfRetries"] for c in config["criteriaList"])
    if total > MAX_RETRIES:
        raise ValueError(
            f"jobExecutionsRetryConfig allows {total} retries; at most {MAX_RETRIES} in total."
        )


def check_step_timeout(value: object, allow_cancel: bool) -> int | None:
    """The data plane's stepTimeoutInMinutes: 1-10080, or -1 (UpdateJobExecution only)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("stepTimeoutInMinutes must be an integer")
    if allow_cancel and value == CANCEL_STEP_TIMER:
        return value
    if not TIMEOUT_MIN <= value <= TIMEOUT_MAX:
        extra = " or -1 (cancel the step timer)" if allow_cancel else ""
        raise ValueError(f"stepTimeoutInMinutes must be {TIMEOUT_MIN}-{TIMEOUT_MAX}{extra}")
    return value


def abort_criterion(config: dict[str, Any] | None, counts: dict[str, int]) -> dict[str, Any] | None:
    """The first criterion met, or None. ``counts``: execution statuses of the job's things.

    The executed things are those that received the job (every execution the job has); a
    criterion is met when at least ``minNumberOfExecutedThings`` received it and the share of
    its failure type among them reaches ``thresholdPercentage``.
    """
    if not config:
        return None
    executed = sum(counts.values())
    for c in config["criteriaList"]:
        if c.get("action", "CANCEL") != "CANCEL" or executed < c["minNumberOfExecutedThings"]:
            continue
        failures = sum(counts.get(s, 0) for s in FAILURES[c["failureType"]])
        if failures and 100.0 * failures / executed >= c["thresholdPercentage"]:
            return c
    return None


def retries_allowed(config: dict[str, Any] | None, status: str) -> tuple[int, tuple[str, ...]]:
    """(retries allowed, the statuses that count against them) after an attempt ends
    ``status`` (FAILED or TIMED_OUT): the criterion of that type, else ALL."""
    if not config or status not in ("FAILED", "TIMED_OUT"):
        return 0, ()
    by_type = {c["failureType"]: c["numberOfRetries"] for c in config["criteriaList"]}
    if status in by_type:
        return by_type[status], (status,)
    if "ALL" in by_type:
        return by_type["ALL"], ("FAILED", "TIMED_OUT")
    return 0, ()
