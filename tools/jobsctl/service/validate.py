"""Request validation: the control plane's, driven by botocore's own ``iot`` service model, and
the checks beyond the shapes (job documents, job policies) and the data plane's (statusDetails,
stepTimeoutInMinutes).

Every member of an operation's input is checked against its shape: required members,
string/list/map lengths, numeric ranges, enums and patterns, with AWS's message format
(``1 validation error detected: Value 'x' at 'jobId' failed to satisfy constraint: ...``).
Java-style ``\\p{..}`` classes in the model are translated to Python checks.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from botocore.model import ListShape, MapShape, Shape, StructureShape

from . import policies
from .common import DEVICE_STATUSES, PARAM
from .errors import JobsError, invalid

MAX_DOCUMENT = 32768
UNSUPPORTED_CREATE_JOB = (
    "namespaceId",
    "destinationPackageVersions",
)
_NAME = re.compile(r"[a-zA-Z0-9:_-]+")


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


# UpdateJobExecution's request members (MQTT and HTTPS alike).
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


def _integer(request: dict[str, Any], key: str) -> None:
    value = request.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise JobsError("InvalidRequest", f"{key} must be an integer.")


def _details(request: dict[str, Any]) -> dict[str, str] | None:
    details = request.get("statusDetails")
    return None if details is None else check_status_details(details)


def start_next_request(request: dict[str, Any]) -> tuple[dict[str, str] | None, int | None]:
    """StartNextPendingJobExecution: (statusDetails, stepTimeoutInMinutes)."""
    return _details(request), check_step_timeout(request.get("stepTimeoutInMinutes"))


def describe_request(request: dict[str, Any]) -> tuple[int | None, bool]:
    """DescribeJobExecution: (executionNumber, includeJobDocument)."""
    _integer(request, "executionNumber")
    include = request.get("includeJobDocument", True)
    if not isinstance(include, bool):
        raise JobsError("InvalidRequest", "includeJobDocument must be a boolean.")
    return request.get("executionNumber"), include


def update_request(request: dict[str, Any]) -> tuple[str, dict[str, str] | None, int | None]:
    """UpdateJobExecution: (status, statusDetails, stepTimeoutInMinutes); the other members
    checked as they are."""
    unknown = set(request) - _UPDATE_KEYS
    if unknown:
        raise JobsError("InvalidRequest", f"Unknown field {sorted(unknown)[0]}.")
    status = request.get("status")
    if status is None:
        raise JobsError("InvalidRequest", "status is required.")
    if status not in DEVICE_STATUSES:
        raise JobsError(
            "InvalidRequest",
            f"status {str(status)[:40]} is not one of IN_PROGRESS, SUCCEEDED, FAILED, REJECTED.",
        )
    details = request.get("statusDetails")
    if details is not None:
        details = check_status_details(details)
    for key in ("expectedVersion", "executionNumber"):  # inline: once per update, per device
        value = request.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise JobsError("InvalidRequest", f"{key} must be an integer.")
    for key in ("includeJobExecutionState", "includeJobDocument"):
        if not isinstance(request.get(key, False), bool):
            raise JobsError("InvalidRequest", f"{key} must be a boolean.")
    step = check_step_timeout(request.get("stepTimeoutInMinutes"), allow_cancel=True)
    return status, details, step


def check_job_document(document: str, params: dict[str, str] | None) -> None:
    """A CreateJob document: at most MAX_DOCUMENT characters, a JSON object, and every
    ${aws:iot:parameter:NAME} in it given in documentParameters."""
    if len(document) > MAX_DOCUMENT:
        raise invalid(f"The job document is longer than {MAX_DOCUMENT} characters.")
    try:
        parsed = json.loads(document)
    except (ValueError, RecursionError) as exc:
        raise invalid(f"The job document is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise invalid("The job document must be a JSON object.")
    if params:
        missing = [p for p in PARAM.findall(document) if p not in params]
        if missing:
            raise invalid(f"documentParameters lacks {', '.join(sorted(set(missing)))}.")


def check_create_job(req: dict[str, Any], now: float) -> None:
    """What CreateJob refuses beyond the shapes: members the local service does not keep, and
    the job policies."""
    for unsupported in UNSUPPORTED_CREATE_JOB:
        if req.get(unsupported) is not None:
            raise invalid(f"{unsupported} is not supported by the local service.")
    check_job_policies(req, now)


_SPECIAL: dict[str, Callable[[str], bool]] = {
    r"[^\p{C}]+": lambda v: bool(v) and not has_control_chars(v),
    r"[^\p{C}]*": lambda v: not has_control_chars(v),
    r"[\p{Upper}\p{Digit}_]+": lambda v: re.fullmatch(r"[A-Z0-9_]+", v) is not None,
    r"[\p{Graph}\x20]*": lambda v: re.fullmatch(r"[\x20-\x7e]*", v) is not None,
}


def _pattern_ok(pattern: str, value: str) -> bool:
    special = _SPECIAL.get(pattern)
    if special:
        return special(value)
    if r"\p" in pattern:
        return True  # a class Python's re cannot express and no member here uses
    try:
        return (
            re.search(pattern if pattern.startswith("^") else f"^(?:{pattern})$", value) is not None
        )
    except re.error:
        return True


def _show(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate(shape: StructureShape, params: dict[str, Any]) -> list[str]:
    """All constraint violations of ``params`` against ``shape`` (AWS wording)."""
    errors: list[str] = []
    _check_struct(shape, params, "", errors)
    return errors


def _check_struct(shape: StructureShape, value: Any, path: str, errors: list[str]) -> None:
    if not isinstance(value, dict):
        errors.append(f"Value at '{path}' failed to satisfy constraint: Member must be an object")
        return
    for name in shape.required_members:
        if value.get(name) is None:
            where = f"{path}.{name}" if path else name
            errors.append(
                f"Value null at '{where}' failed to satisfy constraint: Member must not be null"
            )
    for name, member in shape.members.items():
        if name in value and value[name] is not None:
            _check(member, value[name], f"{path}.{name}" if path else name, errors)


def _check(shape: Shape, value: Any, path: str, errors: list[str]) -> None:
    meta = shape.metadata
    kind = shape.type_name

    def fail(constraint: str) -> None:
        errors.append(
            f"Value '{_show(value)}' at '{path}' failed to satisfy constraint: {constraint}"
        )

    if kind == "structure":
        assert isinstance(shape, StructureShape)
        _check_struct(shape, value, path, errors)
    elif kind == "string":
        if not isinstance(value, str):
            return fail("Member must be a string")
        if "min" in meta and len(value) < meta["min"]:
            fail(f"Member must have length greater than or equal to {meta['min']}")
        if "max" in meta and len(value) > meta["max"]:
            fail(f"Member must have length less than or equal to {meta['max']}")
        if "enum" in meta and value not in meta["enum"]:
            fail(f"Member must satisfy enum value set: [{', '.join(meta['enum'])}]")
        if "pattern" in meta and value and not _pattern_ok(meta["pattern"], value):
            fail(f"Member must satisfy regular expression pattern: {meta['pattern']}")
    elif kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            return fail("Member must be a number")
        if "min" in meta and value < meta["min"]:
            fail(f"Member must have value greater than or equal to {meta['min']}")
        if "max" in meta and value > meta["max"]:
            fail(f"Member must have value less than or equal to {meta['max']}")
    elif kind in ("double", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return fail("Member must be a number")
        if "min" in meta and value < meta["min"]:
            fail(f"Member must have value greater than or equal to {meta['min']}")
        if "max" in meta and value > meta["max"]:
            fail(f"Member must have value less than or equal to {meta['max']}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            fail("Member must be a boolean")
    elif kind == "list":
        assert isinstance(shape, ListShape)
        if not isinstance(value, list):
            return fail("Member must be a list")
        if "min" in meta and len(value) < meta["min"]:
            fail(f"Member must have length greater than or equal to {meta['min']}")
        if "max" in meta and len(value) > meta["max"]:
            fail(f"Member must have length less than or equal to {meta['max']}")
        for i, item in enumerate(value):
            _check(shape.member, item, f"{path}.{i + 1}.member", errors)
    elif kind == "map":
        assert isinstance(shape, MapShape)
        if not isinstance(value, dict):
            return fail("Member must be a map")
        for k, v in value.items():
            _check(shape.key, k, f"{path}.key", errors)
            _check(shape.value, v, f"{path}.value", errors)


def message(errors: list[str]) -> str:
    n = len(errors)
    return f"{n} validation error{'s' if n > 1 else ''} detected: " + "; ".join(errors)


# The deepest JSON nesting the local service takes (a job document, a request body): deeper
# would overflow the parsers' recursion (CPython's json: ~1000 levels) somewhere downstream.
MAX_DEPTH = 64


def json_depth(text: str | bytes) -> int:
    """How deep the arrays and objects of a JSON text nest, without parsing (no recursion);
    brackets inside strings do not count."""
    data = text.encode() if isinstance(text, str) else text
    depth = deepest = 0
    in_string = escaped = False
    for c in data:
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif c in (0x5D, 0x7D):
            depth -= 1
    return deepest


_PARAM_KEY = re.compile(r"[a-zA-Z0-9:_-]+")


def document_parameter_errors(params: Any) -> list[str]:
    """CreateJob's documentParameters as the CreateJob API reference states them (keys 1-128
    of ``[a-zA-Z0-9:_-]``, values 1-1024 without control characters); botocore's model is
    looser on values (30720) and stricter on keys (no ':')."""
    path = "documentParameters"
    if not isinstance(params, dict):
        return [f"Value at '{path}' failed to satisfy constraint: Member must be a map"]
    errors: list[str] = []

    def fail(value: Any, where: str, constraint: str) -> None:
        errors.append(
            f"Value '{_show(value)}' at '{where}' failed to satisfy constraint: {constraint}"
        )

    for key, value in params.items():
        if not 1 <= len(key) <= 128:
            fail(key, f"{path}.key", "Member must have length between 1 and 128")
        elif not _PARAM_KEY.fullmatch(key):
            fail(
                key,
                f"{path}.key",
                "Member must satisfy regular expression pattern: [a-zA-Z0-9:_-]+",
            )
        if not isinstance(value, str):
            fail(value, f"{path}.value", "Member must be a string")
        elif not 1 <= len(value) <= 1024:
            fail(value, f"{path}.value", "Member must have length between 1 and 1024")
        elif has_control_chars(value):
            fail(
                value,
                f"{path}.value",
                r"Member must satisfy regular expression pattern: "
                r"[^\p{C}]+",
            )
    return errors
