"""The control plane: AWS IoT's REST-JSON API for jobs and things, over HTTPS, SigV4-checked.

Routes, parameter locations and input constraints come from botocore's ``iot`` service model,
so what boto3 sends is parsed and validated exactly as the model describes it. Errors carry the
HTTP status, ``x-amzn-ErrorType`` and a JSON ``message``, which boto3 turns into the named
exception.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import ssl
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import botocore.session
from botocore.model import OperationModel, ServiceModel
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from . import control_views as views
from . import fleet, operations, quotas, sigv4, templates
from .errors import ApiError, invalid
from .model import Model
from .validate import MAX_DEPTH, document_parameter_errors, json_depth, message, validate

log = logging.getLogger("jobsctl.controlplane")

OPERATIONS = (
    "CreateJob",
    "DescribeJob",
    "ListJobs",
    "CancelJob",
    "DeleteJob",
    "GetJobDocument",
    "DescribeJobExecution",
    "ListJobExecutionsForJob",
    "ListJobExecutionsForThing",
    "CancelJobExecution",
    "CreateThing",
    "DescribeThing",
    "ListThings",
    "CreateThingGroup",
    "DescribeThingGroup",
    "AddThingToThingGroup",
    *operations.OPERATIONS,
)

Handler = Callable[[dict[str, Any]], dict[str, Any]]

# The largest request body read (bytes). CreateJob's is the largest: a 32768-character
# document, JSON-escaped (up to 6 bytes a character), plus its other members.
MAX_BODY = 256 * 1024


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class _Route:
    def __init__(self, op: OperationModel) -> None:
        self.op = op
        self.method = op.http["method"]
        uri = op.http["requestUri"].split("?")[0]
        pattern = re.sub(r"\{(\w+)\+?\}", r"(?P<\1>[^/]+)", uri)
        self.regex = re.compile(f"^{pattern}$")


def service_model() -> ServiceModel:
    return botocore.session.get_session().get_service_model("iot")


class ControlPlane:
    """A threaded werkzeug server answering the operations in :data:`OPERATIONS`."""

    SIGNING_NAME = "iot"  # the SigV4 service name requests must be signed for

    def __init__(
        self,
        model: Model,
        *,
        access_key: str,
        secret_key: str,
        region: str,
        extra: dict[str, Handler] | None = None,
    ) -> None:
        self.model = model
        self.access_key, self.secret_key, self.region = access_key, secret_key, region
        smodel = service_model()
        extra = extra or {}  # more operations (streams, OTA updates): name -> handler
        names = OPERATIONS + tuple(extra)
        self.routes = [_Route(smodel.operation_model(name)) for name in names]
        self.handlers: dict[str, Handler] = {
            "CreateJob": lambda p: model.create_job(p["jobId"], templates.resolve(model, p)),
            "DescribeJob": lambda p: views.describe_job(model, p["jobId"]),
            "ListJobs": lambda p: views.list_jobs(
                model,
                p.get("status"),
                p.get("targetSelection"),
                p.get("thingGroupName"),
                p.get("maxResults"),
                p.get("nextToken"),
                p.get("thingGroupId"),
            ),
            "CancelJob": lambda p: model.cancel_job(
                p["jobId"], bool(p.get("force")), p.get("reasonCode"), p.get("comment")
            ),
            "DeleteJob": self._delete_job,
            "GetJobDocument": lambda p: {
                "document": views.job_document(model, p["jobId"], bool(p.get("beforeSubstitution")))
            },
            "DescribeJobExecution": lambda p: views.describe_execution(
                model, p["thingName"], p["jobId"], p.get("executionNumber")
            ),
            "ListJobExecutionsForJob": lambda p: views.list_executions_for_job(
                model, p["jobId"], p.get("status"), p.get("maxResults"), p.get("nextToken")
            ),
            "ListJobExecutionsForThing": lambda p: views.list_executions_for_thing(
                model,
                p["thingName"],
                p.get("status"),
                p.get("jobId"),
                p.get("maxResults"),
                p.get("nextToken"),
            ),
            "CancelJobExecution": self._cancel_execution,
            "CreateThing": self._create_thing,
            "DescribeThing": lambda p: fleet.describe_thing(model, p["thingName"]),
            "ListThings": lambda p: fleet.list_things(
                model, p.get("maxResults"), p.get("nextToken")
            ),
            "CreateThingGroup": lambda p: fleet.create_group(
                model,
                p["thingGroupName"],
                (p.get("thingGroupProperties") or {}).get("thingGroupDescription"),
            ),
            "DescribeThingGroup": lambda p: fleet.describe_group(model, p["thingGroupName"]),
            "AddThingToThingGroup": self._add_to_group,
            **operations.handlers(model),
        }
        self.handlers.update(extra)
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.rate: quotas.RateLimiter | None = None  # quotas: requests per second per operation

    # ---------------------------------------------------------------- handlers with logic

    def _delete_job(self, p: dict[str, Any]) -> dict[str, Any]:
        self.model.delete_job(p["jobId"], bool(p.get("force")))
        return {}

    def _cancel_execution(self, p: dict[str, Any]) -> dict[str, Any]:
        self.model.cancel_execution(
            p["thingName"],
            p["jobId"],
            bool(p.get("force")),
            p.get("expectedVersion"),
            p.get("statusDetails"),
        )
        return {}

    def _create_thing(self, p: dict[str, Any]) -> dict[str, Any]:
        from ..broker import RESERVED_NAMES

        if p["thingName"].lower() in RESERVED_NAMES:
            raise invalid(f"Thing name {p['thingName']} is reserved for the Jobs service.")
        return fleet.create_thing(
            self.model, p["thingName"], (p.get("attributePayload") or {}).get("attributes")
        )

    def _add_to_group(self, p: dict[str, Any]) -> dict[str, Any]:
        group = p.get("thingGroupName") or _arn_name(p.get("thingGroupArn"), "thinggroup")
        thing = p.get("thingName") or _arn_name(p.get("thingArn"), "thing")
        if not group or not thing:
            raise invalid("Both a thing (name or ARN) and a thing group (name or ARN) are needed.")
        fleet.add_thing_to_group(self.model, group, thing)
        return {}

    # ---------------------------------------------------------------- WSGI

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        try:
            body = self._handle(request, environ)
            response = Response(json.dumps(body), 200, content_type="application/json")
        except ApiError as exc:
            response = _error(exc.status, exc.name, exc.message)
            if not environ.get("jobsctl.body_read"):
                # What the client sent after the headers was not read: the connection cannot
                # carry another request.
                response.headers["Connection"] = "close"
        except Exception as exc:  # a bug must not take the server down; AWS answers 500
            if isinstance(exc, sqlite3.OperationalError):  # the store locked past its timeout
                response = _error(503, "ServiceUnavailableException", f"The store is busy: {exc}")
            else:
                log.exception("control plane failed on %s %s", request.method, request.path)
                response = _error(500, "InternalFailureException", f"internal error: {exc!r}")
        response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
        return response(environ, start_response)

    def _handle(self, request: Request, environ: dict[str, Any]) -> dict[str, Any]:
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or request.full_path
        raw_path, _, raw_query = raw.partition("?")
        # The headers first: a stranger's request is refused before a byte of its body is
        # read, and nobody's body is read past MAX_BODY.
        lower = {k.lower(): v for k, v in request.headers.items()}
        sigv4.verify_headers(lower, self.access_key, self.region, self.SIGNING_NAME)
        if "chunked" in lower.get("transfer-encoding", "").lower():
            raise invalid("Chunked request bodies are not accepted: send a Content-Length.")
        length = request.content_length or 0
        if length > MAX_BODY:
            raise invalid(
                f"The request body of {length} bytes is larger than the {MAX_BODY} accepted."
            )
        body = request.stream.read(length) if length else b""
        environ["jobsctl.body_read"] = True
        host = request.headers.get("Host", "localhost")
        sigv4.verify(
            method=request.method,
            url=f"https://{host}{raw_path}" + (f"?{raw_query}" if raw_query else ""),
            headers=dict(request.headers.items()),
            body=body,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            service=self.SIGNING_NAME,
        )
        path = unquote(raw_path)
        for route in self.routes:
            if route.method != request.method:
                continue
            m = route.regex.match(raw_path)
            if m:
                if self.rate is not None:
                    self.rate.take(route.op.name)
                params = self._params(route.op, m.groupdict(), raw_query, body, lower)
                return self.handlers[route.op.name](params)
        raise ApiError(
            "UnknownOperationException", 404, f"No operation {request.method} {path} here."
        )

    @staticmethod
    def _params(
        op: OperationModel,
        uri: dict[str, str],
        raw_query: str,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        shape = op.input_shape
        assert shape is not None
        if body.strip():
            if json_depth(body) > MAX_DEPTH:
                raise invalid(f"The request body nests deeper than {MAX_DEPTH} levels.")
            try:
                params = json.loads(body)
            except (ValueError, RecursionError):
                raise ApiError(
                    "InvalidRequestException", 400, "The request body is not valid JSON."
                ) from None
            if not isinstance(params, dict):
                raise invalid("The request body must be a JSON object.")
        else:
            params = {}
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        for name, member in shape.members.items():
            loc = member.serialization.get("location")
            wire = member.serialization.get("name", name)
            if loc == "uri" and wire in uri:
                params[name] = _coerce(member.type_name, unquote(uri[wire]), wire)
            elif loc == "querystring" and wire in query:
                params[name] = _coerce(member.type_name, query[wire], wire)
            elif loc == "header" and headers and wire.lower() in headers:
                params[name] = headers[wire.lower()]
            elif loc in ("uri", "querystring", "header"):
                params.pop(name, None)
        seeded = params.pop("documentParameters", None) if op.name == "CreateJob" else None
        errors = validate(shape, params)
        document = params.get("document") if op.name == "CreateJob" else None
        if isinstance(document, str) and json_depth(document) > MAX_DEPTH:
            errors.append(
                f"Value at 'document' failed to satisfy constraint: Member must not nest"
                f" deeper than {MAX_DEPTH} levels"
            )
        if seeded is not None:
            errors += document_parameter_errors(seeded)
            params["documentParameters"] = seeded
        if errors:
            raise invalid(message(errors))
        return {k: v for k, v in params.items() if k in shape.members}

    # ---------------------------------------------------------------- server

    def start(
        self,
        port: int = 0,
        cert: Path | None = None,
        key: Path | None = None,
        plaintext: bool = False,
    ) -> int:
        context = None
        if not plaintext:
            if cert is None or key is None:
                raise ValueError("a certificate is needed for HTTPS (or plaintext=True)")
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(cert), str(key))
        self._server = make_server(
            "127.0.0.1",
            port,
            self,
            threaded=True,
            ssl_context=context,
            request_handler=_QuietHandler,
        )
        self._server.daemon_threads = True  # type: ignore[attr-defined]
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="control-plane", daemon=True
        )
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def _coerce(kind: str, value: str, name: str) -> Any:
    if kind in ("integer", "long"):
        try:
            return int(value)
        except ValueError:
            raise invalid(f"Query parameter {name} must be a number.") from None
    if kind == "boolean":
        if value not in ("true", "false"):
            raise invalid(f"Query parameter {name} must be true or false.")
        return value == "true"
    return value


def _arn_name(arn: str | None, kind: str) -> str | None:
    if not arn:
        return None
    prefix, _, name = arn.rpartition(f":{kind}/")
    return name if prefix.startswith("arn:aws:iot:") else None


def _error(status: int, name: str, text: str) -> Response:
    response = Response(json.dumps({"message": text}), status, content_type="application/json")
    response.headers["x-amzn-ErrorType"] = name
    return response
