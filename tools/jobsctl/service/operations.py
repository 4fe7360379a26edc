"""The control-plane operations added to the core set: their names (botocore ``iot`` model) and
handlers, which the control plane routes like its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import fleet, jobops, templates
from .errors import invalid
from .model import Model

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def _arn_name(arn: str | None, kind: str) -> str | None:
    if not arn:
        return None
    prefix, _, name = arn.rpartition(f":{kind}/")
    return name if prefix.startswith("arn:aws:iot:") else None


def handlers(model: Model) -> dict[str, Handler]:
    def remove_from_group(p: dict[str, Any]) -> dict[str, Any]:
        group = p.get("thingGroupName") or _arn_name(p.get("thingGroupArn"), "thinggroup")
        thing = p.get("thingName") or _arn_name(p.get("thingArn"), "thing")
        if not group or not thing:
            raise invalid("Both a thing (name or ARN) and a thing group (name or ARN) are needed.")
        fleet.remove_thing_from_group(model, group, thing)
        return {}

    return {
        "UpdateJob": lambda p: jobops.update_job(model, p["jobId"], p),
        "AssociateTargetsWithJob": lambda p: jobops.associate_targets(
            model, p["jobId"], p["targets"], p.get("comment")
        ),
        "DeleteJobExecution": lambda p: jobops.delete_execution(
            model, p["jobId"], p["thingName"], p["executionNumber"], bool(p.get("force"))
        ),
        "CreateJobTemplate": lambda p: templates.create(model, p["jobTemplateId"], p),
        "DescribeJobTemplate": lambda p: templates.describe(model, p["jobTemplateId"]),
        "ListJobTemplates": lambda p: templates.list_templates(
            model, p.get("maxResults"), p.get("nextToken")
        ),
        "DeleteJobTemplate": lambda p: templates.delete(model, p["jobTemplateId"]),
        "ListManagedJobTemplates": lambda p: templates.list_managed(
            p.get("templateName"), p.get("maxResults"), p.get("nextToken")
        ),
        "DescribeManagedJobTemplate": lambda p: templates.describe_managed(
            p["templateName"], p.get("templateVersion")
        ),
        "RemoveThingFromThingGroup": remove_from_group,
        "ListThingsInThingGroup": lambda p: fleet.list_things_in_group(
            model, p["thingGroupName"], p.get("maxResults"), p.get("nextToken")
        ),
        "ListThingGroups": lambda p: fleet.list_groups(
            model, p.get("namePrefixFilter"), p.get("maxResults"), p.get("nextToken")
        ),
        "DeleteThing": lambda p: fleet.delete_thing(
            model, p["thingName"], p.get("expectedVersion")
        ),
        "TagResource": lambda p: fleet.tag_resource(model, p["resourceArn"], p["tags"]),
        "UntagResource": lambda p: fleet.untag_resource(model, p["resourceArn"], p["tagKeys"]),
        "ListTagsForResource": lambda p: fleet.list_tags(
            model, p["resourceArn"], p.get("nextToken")
        ),
        "DescribeEndpoint": lambda p: fleet.describe_endpoint(model, p.get("endpointType")),
        "RegisterCertificateWithoutCA": lambda p: fleet.register_certificate(
            model, p["certificatePem"], p.get("status")
        ),
        "AttachThingPrincipal": lambda p: fleet.attach_principal(
            model, p["thingName"], p["principal"]
        ),
    }


OPERATIONS = (
    "UpdateJob",
    "AssociateTargetsWithJob",
    "DeleteJobExecution",
    "CreateJobTemplate",
    "DescribeJobTemplate",
    "ListJobTemplates",
    "DeleteJobTemplate",
    "ListManagedJobTemplates",
    "DescribeManagedJobTemplate",
    "RemoveThingFromThingGroup",
    "ListThingsInThingGroup",
    "ListThingGroups",
    "DeleteThing",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
    "DescribeEndpoint",
    "RegisterCertificateWithoutCA",
    "AttachThingPrincipal",
)
