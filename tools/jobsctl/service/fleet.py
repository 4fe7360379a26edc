"""Registry operations beyond create/describe: removing things from groups, listing groups and
their members, deleting things, resource tags, and DescribeEndpoint, with the rules of the AWS
IoT API reference."""

from __future__ import annotations

import re
from typing import Any

from .model import (
    ACCOUNT_ID,
    REGION,
    ApiError,
    Model,
    _drop_none,
    _page,
    group_arn,
    invalid,
    not_found,
)

# TagResource: "Each resource can have up to 50 tags" (AWS IoT tagging guide).
MAX_TAGS = 50
_RESOURCE = re.compile(
    rf"arn:aws:iot:{REGION}:{ACCOUNT_ID}:(thing|thinggroup|job|jobtemplate)/([a-zA-Z0-9:_-]+)"
)
_TABLES = {
    "thing": ("things", "name"),
    "thinggroup": ("groups", "name"),
    "job": ("jobs", "job_id"),
    "jobtemplate": ("job_templates", "template_id"),
}
# DescribeEndpoint's endpointType -> the endpoints entry (host:port of the local stack).
ENDPOINT_TYPES = {
    "iot:Data": "mqtt",
    "iot:Data-ATS": "mqtt",
    "iot:Jobs": "jobs_data",
}


def _group_row(model: Model, name: str) -> Any:
    row = model.db.execute("SELECT * FROM groups WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise not_found(f"Thing group {name} cannot be found.")
    return row


def remove_thing_from_group(model: Model, group: str, thing: str) -> dict[str, Any]:
    with model._op() as db:
        _group_row(model, group)
        model._thing(thing)
        db.execute("DELETE FROM memberships WHERE group_name = ? AND thing = ?", (group, thing))
    return {}


def list_things_in_group(
    model: Model, group: str, max_results: int | None, token: str | None
) -> dict[str, Any]:
    with model.lock:
        _group_row(model, group)
        rows = model.db.execute(
            "SELECT thing FROM memberships WHERE group_name = ? ORDER BY thing", (group,)
        ).fetchall()
    page, next_token = _page(rows, max_results, token)
    return _drop_none({"things": [r["thing"] for r in page], "nextToken": next_token})


def list_groups(
    model: Model, prefix: str | None, max_results: int | None, token: str | None
) -> dict[str, Any]:
    with model.lock:
        rows = model.db.execute("SELECT name FROM groups ORDER BY name").fetchall()
    rows = [r for r in rows if not prefix or r["name"].startswith(prefix)]
    page, next_token = _page(rows, max_results, token)
    groups = [{"groupName": r["name"], "groupArn": group_arn(r["name"])} for r in page]
    return _drop_none({"thingGroups": groups, "nextToken": next_token})


def delete_thing(model: Model, name: str, expected_version: int | None) -> dict[str, Any]:
    """DeleteThing: succeeds for a thing that does not exist; refuses one with a certificate."""
    with model._op() as db:
        row = db.execute("SELECT * FROM things WHERE name = ?", (name,)).fetchone()
        if row is None:
            return {}
        if expected_version is not None and expected_version != row["version"]:
            raise ApiError(
                "VersionConflictException",
                409,
                f"expectedVersion {expected_version} does not match {row['version']}.",
            )
        if db.execute("SELECT 1 FROM certificates WHERE thing = ?", (name,)).fetchone():
            raise invalid(
                f"Cannot delete thing {name}: it has attached principals (its certificate)."
            )
        db.execute("DELETE FROM memberships WHERE thing = ?", (name,))
        db.execute("DELETE FROM tags WHERE arn = ?", (f"{_arn_prefix()}thing/{name}",))
        db.execute("DELETE FROM things WHERE name = ?", (name,))
    return {}


def _arn_prefix() -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT_ID}:"


def _resource(model: Model, arn: str) -> None:
    m = _RESOURCE.fullmatch(arn)
    if not m:
        raise invalid(f"{arn} is not the ARN of a taggable resource of this account.")
    table, column = _TABLES[m.group(1)]
    found = model.db.execute(f"SELECT 1 FROM {table} WHERE {column} = ?", (m.group(2),)).fetchone()
    if found is None:
        raise not_found(f"Resource {arn} cannot be found.")


def tag_resource(model: Model, arn: str, tags: list[dict[str, str]]) -> dict[str, Any]:
    with model._op() as db:
        _resource(model, arn)
        keys = {r["key"] for r in db.execute("SELECT key FROM tags WHERE arn = ?", (arn,))}
        total = len(keys | {t["Key"] for t in tags})
        if total > MAX_TAGS:
            raise ApiError(
                "LimitExceededException",
                410,
                f"A resource has at most {MAX_TAGS} tags; {arn} would have {total}.",
            )
        model._set_tags(arn, tags)
    return {}


def untag_resource(model: Model, arn: str, keys: list[str]) -> dict[str, Any]:
    with model._op() as db:
        _resource(model, arn)
        for key in keys:
            db.execute("DELETE FROM tags WHERE arn = ? AND key = ?", (arn, key))
    return {}


def list_tags(model: Model, arn: str, token: str | None) -> dict[str, Any]:
    with model.lock:
        _resource(model, arn)
        rows = model.db.execute(
            "SELECT key, value FROM tags WHERE arn = ? ORDER BY key", (arn,)
        ).fetchall()
    page, next_token = _page(rows, None, token)
    tags = [{"Key": r["key"], "Value": r["value"]} for r in page]
    return _drop_none({"tags": tags, "nextToken": next_token})


def describe_endpoint(model: Model, endpoint_type: str | None) -> dict[str, Any]:
    """The local stack's address for ``endpointType`` as ``host:port`` (its ports are not
    AWS's 443/8883, so the port is part of the address)."""
    kind = ENDPOINT_TYPES.get(endpoint_type or "iot:Data")
    port = model.endpoints.get(kind) if kind else None
    if port is None:
        known = ", ".join(t for t in ENDPOINT_TYPES if model.endpoints.get(ENDPOINT_TYPES[t]))
        raise invalid(f"endpointType {endpoint_type} is not served here (known: {known}).")
    return {"endpointAddress": f"localhost:{port}"}


def certificate_arn(cert_id: str) -> str:
    return f"{_arn_prefix()}cert/{cert_id}"


def register_certificate(model: Model, pem: str, status: str | None) -> dict[str, Any]:
    """RegisterCertificateWithoutCA: record a device certificate, attached to no thing yet
    (AttachThingPrincipal attaches it). Only ACTIVE certificates are kept here."""
    from ..pki import certificate_id

    if status not in (None, "ACTIVE"):
        raise invalid(f"Only ACTIVE certificates are registered here, not {status}.")
    try:
        cert_id = certificate_id(pem.encode())
    except ValueError:
        raise invalid("certificatePem is not a PEM-encoded X.509 certificate.") from None
    with model._op() as db:
        if db.execute("SELECT 1 FROM certificates WHERE cert_id = ?", (cert_id,)).fetchone():
            raise ApiError(
                "ResourceAlreadyExistsException", 409, f"The certificate {cert_id} is registered."
            )
        db.execute("INSERT INTO certificates VALUES (?, '', ?, ?)", (cert_id, pem, model.now()))
    return {"certificateArn": certificate_arn(cert_id), "certificateId": cert_id}


def attach_principal(model: Model, thing: str, principal: str) -> dict[str, Any]:
    """AttachThingPrincipal: the certificate (by ARN) becomes the thing's (one thing each)."""
    prefix, _, cert_id = principal.rpartition(":cert/")
    if prefix != _arn_prefix().rstrip(":") or not cert_id:
        raise invalid(f"The principal {principal} is not a certificate ARN of this account.")
    with model._op() as db:
        model._thing(thing)
        cur = db.execute("UPDATE certificates SET thing = ? WHERE cert_id = ?", (thing, cert_id))
        if not cur.rowcount:
            raise not_found(f"The certificate {cert_id} cannot be found.")
    return {}
