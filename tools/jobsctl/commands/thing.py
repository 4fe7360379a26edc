"""``jobsctl thing create``: register a thing (and group) and issue its certificate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..pki import CertificateAuthority
from ..service.model import Model
from ..service.store import Store
from ..stack import check_name, iot_client, issue_thing
from . import print_json, serve_alive


def register(sub: Any) -> None:
    p = sub.add_parser("thing", help="things of the local stack")
    tsub = p.add_subparsers(dest="thing_command", metavar="ACTION")
    tsub.required = True
    c = tsub.add_parser(
        "create",
        help="register a thing and issue its certificate into DIR/things/NAME/",
    )
    c.add_argument("--state-dir", type=Path, required=True)
    c.add_argument("name", help="thing name (1-128 of [a-zA-Z0-9:_-])")
    c.add_argument("--group", help="thing group to add the thing to (created when missing)")
    c.set_defaults(func=create)


def create(args: argparse.Namespace) -> int:
    print_json(create_thing(args.state_dir, args.name, args.group))
    return 0


def create_thing(state_dir: Path, name: str, group: str | None) -> dict[str, Any]:
    """Register ``name`` in the state dir; through the control plane when ``serve`` runs,
    so that the running service pushes CONTINUOUS jobs to the new group member at once."""
    check_name(name)
    if group is not None:
        check_name(group, "thing group")
    state_dir = Path(state_dir)
    endpoints = serve_alive(state_dir)
    ca = CertificateAuthority(state_dir / "ca")
    store = Store(state_dir / "jobs.sqlite3")
    try:
        model = Model(store)
        if endpoints is not None:
            iot = iot_client(endpoints)
            iot.create_thing(thingName=name)
            if group:
                iot.create_thing_group(thingGroupName=group)
                iot.add_thing_to_thing_group(thingGroupName=group, thingName=name)
        else:
            model.create_thing(name)
            if group:
                model.create_group(group)
                model.add_thing_to_group(group, name)
        info = issue_thing(state_dir, ca, model, name)
    finally:
        store.close()
    if endpoints is not None:
        info.update(mqtt_host=endpoints["mqtt_host"], mqtt_port=endpoints["mqtt_port"])
    return info
