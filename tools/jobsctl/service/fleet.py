"""The registry: things, thing groups and their members, certificates, resource tags and
DescribeEndpoint, with the rules of the AWS IoT API reference. Functions of the model (its lock
and transaction, :meth:`Model._op`); adding a thing to a group is the one that starts
transitions (a CONTINUOUS job's new target)."""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from typing import TYPE_CHECKING, Any

from .common import ACCOUNT_ID, REGION, group_arn, thing_arn
from .common import drop_none as _drop_none
from .common import page as _page
from .errors import ApiError, invalid, not_found

if TYPE_CHECKING:
    from .model import Model

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


def create_thing(
    model: Model, name: str, attributes: dict[str, str] | None = None
) -> dict[str, Any]:
    with model._op() as db:
        row = db.execute("SELECT * FROM things WHERE name = ?", (name,)).fetchone()
        if row is not None:
            if attributes and json.loads(row["attributes"]) != attributes:
                raise ApiError(
                    "ResourceAlreadyExistsException",
                    409,
                    f"Thing {name} already exists in account with different attributes",
                )
            thing_id = row["thing_id"]
        else:
            thing_id = str(uuid.uuid4())
            db.execute(
                "INSERT INTO things VALUES (?, ?, ?, 1, ?)",
                (name, thing_id, json.dumps(attributes or {}), model.now()),
            )
    return {"thingName": name, "thingArn": thing_arn(name), "thingId": thing_id}


def thing_row(db: sqlite3.Connection, name: str) -> sqlite3.Row:
    """The thing's row; ResourceNotFoundException when there is none."""
    row: sqlite3.Row | None = db.execute("SELECT * FROM things WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise not_found(f"Thing {name} cannot be found.")
    return row


def thing_exists(model: Model, name: str) -> bool:
    with model.lock:
        found = model.db.execute("SELECT 1 FROM things WHERE name = ?", (name,)).fetchone()
    return found is not None


def describe_thing(model: Model, name: str) -> dict[str, Any]:
    with model.lock:
        row = thing_row(model.db, name)
    return {
        "defaultClientId": name,
        "thingName": name,
        "thingId": row["thing_id"],
        "thingArn": thing_arn(name),
        "attributes": json.loads(row["attributes"]),
        "version": row["version"],
    }


def list_things(model: Model, max_results: int | None, token: str | None) -> dict[str, Any]:
    with model.lock:
        rows = model.db.execute("SELECT * FROM things ORDER BY name").fetchall()
    page, next_token = _page(rows, max_results, token)
    things = [
        {
            "thingName": r["name"],
            "thingArn": thing_arn(r["name"]),
            "attributes": json.loads(r["attributes"]),
            "version": r["version"],
        }
        for r in page
    ]
    return _drop_none({"things": things, "nextToken": next_token})


def create_group(model: Model, name: str, description: str | None = None) -> dict[str, Any]:
    with model._op() as db:
        row = db.execute("SELECT * FROM groups WHERE name = ?", (name,)).fetchone()
        if row is not None:
            group_id = row["group_id"]
        else:
            group_id = str(uuid.uuid4())
            db.execute(
                "INSERT INTO groups VALUES (?, ?, ?, ?)",
                (name, group_id, description, model.now()),
            )
    return {"thingGroupName": name, "thingGroupArn": group_arn(name), "thingGroupId": group_id}


def describe_group(model: Model, name: str) -> dict[str, Any]:
    with model.lock:
        row = model.db.execute("SELECT * FROM groups WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise not_found(f"Thing group {name} cannot be found.")
    return _drop_none(
        {
            "thingGroupName": name,
            "thingGroupId": row["group_id"],
            "thingGroupArn": group_arn(name),
            "version": 1,
            "thingGroupProperties": _drop_none({"thingGroupDescription": row["description"]}),
            "thingGroupMetadata": {"creationDate": row["created_at"]},
            "status": "ACTIVE",
        }
    )


def add_thing_to_group(model: Model, group: str, thing: str) -> None:
    with model._op() as db:
        if db.execute("SELECT 1 FROM groups WHERE name = ?", (group,)).fetchone() is None:
            raise not_found(f"Thing group {group} cannot be found.")
        thing_row(db, thing)
        cur = db.execute("INSERT OR IGNORE INTO memberships VALUES (?, ?)", (group, thing))
        if cur.rowcount:
            model.joined_group(group, thing)


def add_certificate(model: Model, cert_id: str, thing: str, pem: str) -> None:
    """The thing's certificate, registered and attached at once (a stack's own things)."""
    with model._op() as db:
        db.execute(
            "INSERT OR REPLACE INTO certificates VALUES (?, ?, ?, ?)",
            (cert_id, thing, pem, model.now()),
        )


class Registry:
    """The registry of one model as an object (what jobsctl.things registers a thing with)."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def create_thing(self, name: str) -> dict[str, Any]:
        return create_thing(self.model, name)

    def create_group(self, name: str) -> dict[str, Any]:
        return create_group(self.model, name)

    def add_thing_to_group(self, group: str, thing: str) -> None:
        add_thing_to_group(self.model, group, thing)

    def add_certificate(self, cert_id: str, thing: str, pem: str) -> None:
        add_certificate(self.model, cert_id, thing, pem)


def _group_row(model: Model, name: str) -> Any:
    row = model.db.execute("SELECT * FROM groups WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise not_found(f"Thing group {name} cannot be found.")
    return row


def remove_thing_from_group(model: Model, group: str, thing: str) -> dict[str, Any]:
    with model._op() as db:
        _group_row(model, group)
        thing_row(db, thing)
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
        thing_row(db, thing)
        cur = db.execute("UPDATE certificates SET thing = ? WHERE cert_id = ?", (thing, cert_id))
        if not cur.rowcount:
            raise not_found(f"The certificate {cert_id} cannot be found.")
    return {}
