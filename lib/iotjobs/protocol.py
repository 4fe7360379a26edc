# AWS IoT Jobs MQTT data plane: topics, requests, replies, limits, error reactions.
#
# Pure: no sockets, no flash, no clock. Every function here runs the same on a board, on the
# Unix port and (for the tests) on CPython. Limits are those of the Jobs API (REFERENCE §1);
# they are checked before anything is sent, because the service answers a bad request with an
# error the device can do nothing about.
import json

from micropython import const

_THING_MAX = const(128)
_JOB_ID_MAX = const(64)
_KEY_MAX = const(128)
_VALUE_MAX = const(1024)
_TOKEN_MAX = const(64)
STEP_TIMEOUT_MAX = const(10080)

# Statuses a device may set, and the terminal ones.
IN_PROGRESS = "IN_PROGRESS"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
REJECTED = "REJECTED"
TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED")

# What the agent does about each error code of a /rejected reply. The README has this table
# in prose; tests pin every row.
RETRY = const(1)  # back off with jitter and send the same request again
REFRESH = const(2)  # describe the execution, adopt its state, decide again (once)
DROP = const(3)  # the execution is gone or finished: stop working on it
BUG = const(4)  # our request was wrong: log it, report FAILED if we can, never crash

REACTIONS = {
    "RequestThrottled": RETRY,
    "InternalError": RETRY,
    "VersionMismatch": REFRESH,
    "InvalidStateTransition": REFRESH,
    "TerminalStateReached": DROP,
    "ResourceNotFound": DROP,
    "InvalidJson": BUG,
    "InvalidRequest": BUG,
    "InvalidTopic": BUG,
}


def reaction(code):
    # Unknown codes are treated like our own mistakes: logged, never retried forever.
    return REACTIONS.get(code, BUG)


def _word(s, limit, extra):
    # [a-zA-Z0-9_-]+ plus the characters in extra; no re module needed (it costs RAM).
    if not isinstance(s, str) or not 0 < len(s) <= limit:
        return False
    for c in s:
        if not (c.isalpha() and c < "\x80" or "0" <= c <= "9" or c in "_-" or c in extra):
            return False
    return True


def valid_thing(name):
    return _word(name, _THING_MAX, ":")


def valid_job_id(job_id):
    return _word(job_id, _JOB_ID_MAX, "")


def clean_details(details):
    # Makes any dict fit the limits: values are str()-ed, cut to 1024 characters and stripped
    # of control characters; bad keys are dropped. For reasons built from exceptions and
    # documents, which must never make the final report itself invalid.
    out = {}
    for k, v in details.items():
        if not _word(k, _KEY_MAX, ":") or v is None:
            continue
        v = v if isinstance(v, str) else str(v)
        if len(v) > _VALUE_MAX:
            v = v[: _VALUE_MAX - 3] + "..."
        if any(c < " " or c == "\x7f" for c in v):
            v = "".join(" " if c < " " or c == "\x7f" else c for c in v)
        out[k] = v or "-"
    return out


# ------------------------------------------------------------------------------ topics


def prefix(thing):
    if not valid_thing(thing):
        raise ValueError("bad thing name %r" % (thing,))
    return "$aws/things/" + thing + "/jobs/"


def subscriptions(thing):
    # The reply topics the agent uses, as wildcards (the broker ACL allows the thing's own
    # tree only). `start-next/+` does not match our own requests on `start-next`, so the
    # broker never echoes them back to us.
    p = prefix(thing)
    return (p + "notify-next", p + "start-next/+", p + "+/get/+", p + "+/update/+")


def topic_start_next(thing):
    return prefix(thing) + "start-next"


def topic_describe(thing, job_id):
    return prefix(thing) + _job(job_id) + "/get"


def topic_update(thing, job_id):
    return prefix(thing) + _job(job_id) + "/update"


def _job(job_id):
    if job_id != "$next" and not valid_job_id(job_id):
        raise ValueError("bad job id %r" % (job_id,))
    return job_id


# Kinds of incoming topics.
NOTIFY_NEXT = const(1)
NOTIFY = const(2)
START_NEXT = const(3)
GET_PENDING = const(4)
DESCRIBE = const(5)
UPDATE = const(6)


def parse_topic(thing, topic):
    # -> (kind, job_id or None, accepted: bool or None), or None for a topic that is not a
    # Jobs topic of this thing.
    p = prefix(thing)
    if not topic.startswith(p):
        return None
    parts = topic[len(p) :].split("/")
    n = len(parts)
    if n == 1:
        if parts[0] == "notify-next":
            return (NOTIFY_NEXT, None, None)
        if parts[0] == "notify":
            return (NOTIFY, None, None)
        return None
    ok = parts[-1] == "accepted"
    if not ok and parts[-1] != "rejected":
        return None
    if n == 2:
        if parts[0] == "start-next":
            return (START_NEXT, None, ok)
        if parts[0] == "get":
            return (GET_PENDING, None, ok)
    elif n == 3 and parts[1] in ("get", "update"):
        return (DESCRIBE if parts[1] == "get" else UPDATE, parts[0], ok)
    return None


# ------------------------------------------------------------------------------ requests


def _token(token):
    if not isinstance(token, str) or not 0 < len(token) <= _TOKEN_MAX:
        raise ValueError("bad clientToken")
    return token


def _step(minutes):
    if not isinstance(minutes, int) or not (minutes == -1 or 1 <= minutes <= STEP_TIMEOUT_MAX):
        raise ValueError("stepTimeoutInMinutes must be 1-%d (or -1)" % STEP_TIMEOUT_MAX)
    return minutes


def start_next(token, details=None, step_timeout=None):
    req = {"clientToken": _token(token)}
    if details:
        req["statusDetails"] = details  # passed through clean_details() by the caller
    if step_timeout is not None:
        req["stepTimeoutInMinutes"] = _step(step_timeout)
    return json.dumps(req)


def describe(token, include_document=True):
    return json.dumps({"clientToken": _token(token), "includeJobDocument": include_document})


def update(token, status, details=None, expected_version=None, step_timeout=None):
    # details: passed through clean_details() by the caller.
    if status not in (IN_PROGRESS, SUCCEEDED, FAILED, REJECTED):
        raise ValueError("a device cannot set status %r" % (status,))
    req = {"clientToken": _token(token), "status": status, "includeJobExecutionState": True}
    if details:
        req["statusDetails"] = details
    if expected_version is not None:
        req["expectedVersion"] = expected_version
    if step_timeout is not None:
        req["stepTimeoutInMinutes"] = _step(step_timeout)
    return json.dumps(req)


# ------------------------------------------------------------------------------ replies


class Execution:
    # What the agent needs of a JobExecution (start-next, describe, notify-next).
    def __init__(self, job_id, status, version, document):
        self.job_id = job_id
        self.status = status
        self.version = version
        self.document = document

    def terminal(self):
        return self.status in TERMINAL


def parse_execution(obj):
    # -> Execution, or None when obj has no (usable) execution. A reply that names a job but
    # whose document is not a JSON object still yields an Execution (document None) so that
    # the agent can REJECT it with a reason instead of ignoring it.
    if not isinstance(obj, dict):
        return None
    job_id = obj.get("jobId")
    if not valid_job_id(job_id):
        return None
    doc = obj.get("jobDocument")
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except ValueError:
            doc = None
    if not isinstance(doc, dict):
        doc = None
    status = obj.get("status")
    version = obj.get("versionNumber")
    return Execution(
        job_id,
        status if isinstance(status, str) else None,
        version if isinstance(version, int) else None,
        doc,
    )


def reply_execution(reply):
    # start-next, describe and notify-next replies carry {"execution": {...}}.
    return parse_execution(reply.get("execution")) if isinstance(reply, dict) else None


def reply_state(reply):
    # -> (status, version) from an update reply or a VersionMismatch/InvalidStateTransition
    # rejection's executionState, or (None, None).
    st = reply.get("executionState") if isinstance(reply, dict) else None
    if not isinstance(st, dict):
        return (None, None)
    v = st.get("versionNumber")
    s = st.get("status")
    return (s if isinstance(s, str) else None, v if isinstance(v, int) else None)


def reply_error(reply):
    # -> (code, message) of a /rejected reply.
    if not isinstance(reply, dict):
        return ("InvalidJson", "unparsable rejection")
    code = reply.get("code")
    msg = reply.get("message")
    return (code if isinstance(code, str) else "Unknown", msg if isinstance(msg, str) else "")


def operation(doc):
    # The handler name a job document asks for: Device Client style {"operation": ...}, or
    # AWS's FreeRTOS OTA document {"afr_ota": {...}}.
    if not isinstance(doc, dict):
        return None
    op = doc.get("operation")
    if isinstance(op, str) and op:
        return op
    if "afr_ota" in doc:
        return "afr_ota"
    return None
