"""Job templates: CreateJobTemplate/DescribeJobTemplate/ListJobTemplates/DeleteJobTemplate,
the managed templates (``arn:aws:iot:REGION::jobtemplate/NAME:VERSION``), and the resolution of
CreateJob's ``jobTemplateArn`` into the job's document and settings.

As in AWS IoT: a job made from a template takes the template's document and settings, the
request's own settings win; ``documentParameters`` are taken only with a managed template (whose
document has ``${aws:iot:parameter:NAME}`` placeholders), never with a custom template or none.
"""

from __future__ import annotations

import json
import re
from typing import Any

from . import control_views
from .common import ACCOUNT_ID, REGION
from .common import drop_none as _drop_none
from .common import page as _page
from .errors import ApiError, invalid, not_found
from .model import Model
from .validate import MAX_DOCUMENT, check_job_policies

# Settings a template carries into a job (CreateJobTemplate's members that CreateJob has too).
_CARRIED = (
    "presignedUrlConfig",
    "jobExecutionsRolloutConfig",
    "abortConfig",
    "timeoutConfig",
    "jobExecutionsRetryConfig",
)
_CUSTOM_ARN = re.compile(rf"arn:aws:iot:{REGION}:{ACCOUNT_ID}:jobtemplate/([a-zA-Z0-9_-]+)")
_MANAGED_ARN = re.compile(rf"arn:aws:iot:{REGION}::jobtemplate/([A-Za-z0-9-]+):([0-9.]+)")
_PARAM = re.compile(r"\$\{aws:iot:parameter:([a-zA-Z0-9:_-]+)\}")

# Managed templates the local service offers, in the style of AWS's (name:version, a
# description, a document with parameters). The documents are this project's own.
MANAGED: dict[tuple[str, str], dict[str, Any]] = {
    ("AWS-Reboot", "1.0"): {
        "description": "Reboots the device.",
        "document": {"operation": "reboot"},
    },
    ("AWS-Download-File", "1.0"): {
        "description": "Downloads a file to the device.",
        "document": {
            "operation": "download",
            "url": "${aws:iot:parameter:downloadUrl}",
            "path": "${aws:iot:parameter:filePath}",
        },
    },
}


def template_arn(template_id: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT_ID}:jobtemplate/{template_id}"


def managed_arn(name: str, version: str) -> str:
    return f"arn:aws:iot:{REGION}::jobtemplate/{name}:{version}"


def create(model: Model, template_id: str, req: dict[str, Any]) -> dict[str, Any]:
    sources = [k for k in ("jobArn", "document", "documentSource") if req.get(k) is not None]
    if len(sources) != 1:
        raise invalid("Exactly one of jobArn, document and documentSource must be given.")
    check_job_policies(req, model.now())
    body: dict[str, Any] = {"description": req["description"]}
    if req.get("jobArn"):
        job_id = req["jobArn"].rpartition(":job/")[2]
        with model.lock:
            job = model._job(job_id)
            described = control_views.job(model, job)
        body["document"] = job["document"]
        if job["document_source"]:
            body["documentSource"] = job["document_source"]
        body.update({k: described[k] for k in _CARRIED if k in described})
    elif req.get("document") is not None:
        _check_document(req["document"])
        body["document"] = req["document"]
    else:
        body["documentSource"] = req["documentSource"]
        body["document"] = _source_text(model, req["documentSource"])
    body.update({k: req[k] for k in (*_CARRIED, "maintenanceWindows") if req.get(k) is not None})
    with model._op() as db:
        if db.execute(
            "SELECT 1 FROM job_templates WHERE template_id = ?", (template_id,)
        ).fetchone():
            raise ApiError("ConflictException", 409, f"Job template {template_id} already exists.")
        db.execute(
            "INSERT INTO job_templates VALUES (?, ?, ?)",
            (template_id, json.dumps(body), model.now()),
        )
        model._set_tags(template_arn(template_id), req.get("tags") or [])
    return {"jobTemplateArn": template_arn(template_id), "jobTemplateId": template_id}


def _check_document(document: str) -> None:
    if len(document) > MAX_DOCUMENT:
        raise invalid(f"The job document is longer than {MAX_DOCUMENT} characters.")
    try:
        parsed = json.loads(document)
    except ValueError as exc:
        raise invalid(f"The job document is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise invalid("The job document must be a JSON object.")


def _source_text(model: Model, source: str) -> str:
    return model._read_source(source)


def _row(model: Model, template_id: str) -> Any:
    row = model.db.execute(
        "SELECT * FROM job_templates WHERE template_id = ?", (template_id,)
    ).fetchone()
    if row is None:
        raise not_found(f"Job template {template_id} cannot be found.")
    return row


def describe(model: Model, template_id: str) -> dict[str, Any]:
    with model.lock:
        row = _row(model, template_id)
    body = json.loads(row["body"])
    return {
        "jobTemplateArn": template_arn(template_id),
        "jobTemplateId": template_id,
        "createdAt": row["created_at"],
        **body,
    }


def list_templates(model: Model, max_results: int | None, token: str | None) -> dict[str, Any]:
    with model.lock:
        rows = model.db.execute("SELECT * FROM job_templates ORDER BY template_id").fetchall()
    page, next_token = _page(rows, max_results, token)
    templates = [
        {
            "jobTemplateArn": template_arn(r["template_id"]),
            "jobTemplateId": r["template_id"],
            "description": json.loads(r["body"])["description"],
            "createdAt": r["created_at"],
        }
        for r in page
    ]
    return _drop_none({"jobTemplates": templates, "nextToken": next_token})


def delete(model: Model, template_id: str) -> dict[str, Any]:
    with model._op() as db:
        _row(model, template_id)
        db.execute("DELETE FROM job_templates WHERE template_id = ?", (template_id,))
        db.execute("DELETE FROM tags WHERE arn = ?", (template_arn(template_id),))
    return {}


def _managed_summary(name: str, version: str, t: dict[str, Any]) -> dict[str, Any]:
    return {
        "templateArn": managed_arn(name, version),
        "templateName": name,
        "description": t["description"],
        "environments": ["LINUX"],
        "templateVersion": version,
    }


def list_managed(name: str | None, max_results: int | None, token: str | None) -> dict[str, Any]:
    rows = [(n, v, t) for (n, v), t in sorted(MANAGED.items()) if not name or n == name]
    page, next_token = _page(rows, max_results, token)
    return _drop_none(
        {
            "managedJobTemplates": [_managed_summary(*r) for r in page],
            "nextToken": next_token,
        }
    )


def describe_managed(name: str, version: str | None) -> dict[str, Any]:
    versions = sorted(v for (n, v) in MANAGED if n == name)
    if not versions or (version is not None and version not in versions):
        raise not_found(f"Managed job template {name} {version or ''} cannot be found.")
    version = version or versions[-1]
    t = MANAGED[(name, version)]
    document = json.dumps(t["document"])
    return {
        **_managed_summary(name, version, t),
        "documentParameters": [
            {"key": p, "description": p, "optional": False} for p in _PARAM.findall(document)
        ],
        "document": document,
    }


def resolve(model: Model, req: dict[str, Any]) -> dict[str, Any]:
    """CreateJob's request with its ``jobTemplateArn`` resolved (document and settings)."""
    arn = req.get("jobTemplateArn")
    params = req.get("documentParameters")
    if arn is None:
        if params:
            raise invalid(
                "documentParameters can only be used when creating jobs from AWS managed"
                " templates (jobTemplateArn)."
            )
        return req
    if req.get("document") is not None or req.get("documentSource") is not None:
        raise invalid(
            "A job made from a template takes the template's document: give no"
            " document or documentSource."
        )
    out = dict(req)
    managed = _MANAGED_ARN.fullmatch(arn)
    custom = _CUSTOM_ARN.fullmatch(arn)
    if managed:
        t = MANAGED.get((managed.group(1), managed.group(2)))
        if t is None:
            raise not_found(f"Managed job template {arn} cannot be found.")
        out["document"] = json.dumps(t["document"])
        if not params and _PARAM.search(out["document"]):
            raise invalid(f"{arn} needs documentParameters for its placeholders.")
        return out
    if custom is None:
        raise invalid(f"jobTemplateArn {arn} is not the ARN of a job template of this account.")
    if params:
        raise invalid(
            "documentParameters can only be used when creating jobs from AWS managed"
            " templates, not from a custom job template."
        )
    with model.lock:
        body = json.loads(_row(model, custom.group(1))["body"])
    out["document"] = body["document"]
    for key in _CARRIED:
        if out.get(key) is None and key in body:
            out[key] = body[key]
    if body.get("maintenanceWindows") and not (out.get("schedulingConfig") or {}).get(
        "maintenanceWindows"
    ):
        sched = dict(out.get("schedulingConfig") or {})
        sched["maintenanceWindows"] = body["maintenanceWindows"]
        out["schedulingConfig"] = sched
    return out
