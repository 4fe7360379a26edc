"""The AWS IoT Jobs data plane over HTTPS (``boto3.client("iot-jobs-data")``): REST-JSON as
botocore's ``iot-jobs-data`` model describes it, SigV4-signed with the signing name
``iot-jobs-data``, on its own port (AWS serves it on its own endpoint, ``iot:Jobs``).

Every request is answered by the same code as the MQTT data plane (:class:`DataPlane`'s
request handlers over the one :class:`Model`), so both views always agree; a change made here
pushes ``notify``/``notify-next`` to the thing over MQTT as a change made there does. The MQTT
error codes map to the HTTP API's exceptions.
"""

from __future__ import annotations

import json
import re
from typing import Any

import botocore.session
from botocore.model import OperationModel

from . import fleet
from .controlplane import ControlPlane, _Route
from .dataplane import DataPlane
from .errors import ApiError, JobsError, not_found
from .model import Model

OPERATIONS = (
    "GetPendingJobExecutions",
    "StartNextPendingJobExecution",
    "DescribeJobExecution",
    "UpdateJobExecution",
)
# MQTT error code -> (HTTP API exception, status) as in botocore's iot-jobs-data model
_ERRORS = {
    "InvalidRequest": ("InvalidRequestException", 400),
    "InvalidJson": ("InvalidRequestException", 400),
    "ResourceNotFound": ("ResourceNotFoundException", 404),
    "InvalidStateTransition": ("InvalidStateTransitionException", 409),
    "VersionMismatch": ("InvalidStateTransitionException", 409),
    "TerminalStateReached": ("TerminalStateException", 410),
    "RequestThrottled": ("ThrottlingException", 429),
    "InternalError": ("ServiceUnavailableException", 503),
}


def _route(op: OperationModel) -> _Route:
    route = _Route(op)
    uri = op.http["requestUri"].split("?")[0]
    parts = re.split(r"(\{\w+\+?\})", uri)
    pattern = "".join(
        f"(?P<{p[1:-1].rstrip('+')}>[^/]+)"
        if p.startswith("{")
        else re.escape(p).replace(r"\$", r"(?:\$|%24)")
        for p in parts
    )
    route.regex = re.compile(f"^{pattern}$")
    return route


class JobsDataApi(ControlPlane):
    """The ``iot-jobs-data`` HTTPS API over the model and the MQTT data plane's handlers."""

    SIGNING_NAME = "iot-jobs-data"

    def __init__(
        self, model: Model, data: DataPlane, *, access_key: str, secret_key: str, region: str
    ) -> None:
        # the control plane's server, signature checks and limits; this API's routes
        super().__init__(model, access_key=access_key, secret_key=secret_key, region=region)
        self.data = data
        smodel = botocore.session.get_session().get_service_model("iot-jobs-data")
        self.routes = [_route(smodel.operation_model(name)) for name in OPERATIONS]
        self.handlers = {
            "GetPendingJobExecutions": lambda p: self._call(p, lambda: data._get(p["thingName"])),
            "StartNextPendingJobExecution": lambda p: self._call(
                p, lambda: data._start_next(p["thingName"], _body(p, "statusDetails"))
            ),
            "DescribeJobExecution": lambda p: self._call(
                p,
                lambda: data._describe(
                    p["thingName"], p["jobId"], _body(p, "executionNumber", "includeJobDocument")
                ),
            ),
            "UpdateJobExecution": lambda p: self._call(
                p, lambda: data._update(p["thingName"], p["jobId"], _update_body(p))
            ),
        }

    def _call(self, p: dict[str, Any], run: Any) -> dict[str, Any]:
        thing = p["thingName"]
        if not fleet.thing_exists(self.model, thing):
            raise not_found(f"Thing {thing} cannot be found.")
        try:
            if self.data._throttled(thing):
                raise JobsError("RequestThrottled", "Too many requests from this thing.")
            reply: dict[str, Any] = run()
        except JobsError as exc:
            name, status = _ERRORS.get(exc.code, ("ServiceUnavailableException", 503))
            raise ApiError(name, status, exc.message) from None
        execution = reply.get("execution")
        if isinstance(execution, dict) and "jobDocument" in execution:
            execution["jobDocument"] = json.dumps(execution["jobDocument"])
        if "jobDocument" in reply:
            reply["jobDocument"] = json.dumps(reply["jobDocument"])
        return reply


def _body(p: dict[str, Any], *keys: str) -> dict[str, Any]:
    out = {k: p[k] for k in keys if k in p}
    if "stepTimeoutInMinutes" in p:
        out["stepTimeoutInMinutes"] = p["stepTimeoutInMinutes"]
    return out


def _update_body(p: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k not in ("thingName", "jobId")}
