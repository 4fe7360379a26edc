"""``jobsctl thing create``: register a thing (and group) and issue its certificate."""

from __future__ import annotations

import argparse
from typing import Any

from ..things import create_thing
from . import print_json, state_dir_argument


def register(sub: Any) -> None:
    p = sub.add_parser("thing", help="things of the local stack")
    tsub = p.add_subparsers(dest="thing_command", metavar="ACTION")
    tsub.required = True
    c = tsub.add_parser(
        "create",
        help="register a thing and issue its certificate into DIR/things/NAME/",
        description=(
            "Through the running stack's control plane when `jobsctl serve` runs on DIR (its "
            "CONTINUOUS jobs reach the new group member at once), else into DIR's store under "
            "the folder's lock."
        ),
    )
    state_dir_argument(c)
    c.add_argument("name", help="thing name (1-128 of [a-zA-Z0-9:_-])")
    c.add_argument("--group", help="thing group to add the thing to (created when missing)")
    c.set_defaults(func=create)


def create(args: argparse.Namespace) -> int:
    print_json(create_thing(args.state_dir, args.name, args.group))
    return 0
