"""``jobsctl provision --aws NAME --out DIR``: a thing on real AWS IoT Core and its bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..provision import check_thing_name, provision_aws
from . import print_json


def register(sub: Any) -> None:
    p = sub.add_parser(
        "provision",
        help="create a thing on real AWS IoT Core and write its device bundle",
        description=(
            "Creates the thing (and group), an active certificate, a least-privilege policy "
            "(its own client id, its own $aws/things/NAME/jobs/* topics), and writes "
            "config.json, device.pem, device.key, AmazonRootCA1.pem and (with --ota-key) "
            "ota_key.pem into DIR: a complete bundle for `jobsctl deploy --bundle DIR`. Uses "
            "the AWS credentials of the profile (or the environment). config.json's keys: "
            "docs/configuration.md."
        ),
    )
    p.add_argument("--aws", metavar="NAME", required=True, help="thing name")
    p.add_argument("--out", metavar="DIR", type=Path, required=True, help="bundle folder")
    p.add_argument("--group", help="thing group to add the thing to (created when missing)")
    p.add_argument(
        "--ota-key",
        type=Path,
        metavar="PUB_PEM",
        help="the OTA signing key's public half (jobsctl image keygen's *.pub.pem): the board "
        "then accepts only images and bundles signed with it (config ota_key_file)",
    )
    p.add_argument("--wifi-ssid", help="Wi-Fi network the board joins (config wifi_ssid)")
    p.add_argument("--wifi-password", help="its password (config wifi_password)")
    p.add_argument("--region", help="AWS region (default: the profile's)")
    p.add_argument("--profile", help="AWS profile (default: the environment's)")
    p.set_defaults(func=run)


def iot_client(region: str | None, profile: str | None) -> Any:
    import boto3

    return boto3.Session(profile_name=profile, region_name=region).client("iot")


def run(args: argparse.Namespace) -> int:
    check_thing_name(args.aws)  # before any AWS setup: bad input fails first and fast
    if args.group is not None:
        check_thing_name(args.group)
    iot = iot_client(args.region, args.profile)
    info = provision_aws(
        args.aws,
        args.out,
        iot,
        group=args.group,
        ota_key=args.ota_key,
        wifi_ssid=args.wifi_ssid,
        wifi_password=args.wifi_password,
    )
    print_json(info)
    if args.ota_key is None:
        print(
            "jobsctl: note: no --ota-key: this board accepts OTA documents only with a sha256 "
            "(AWS's afr_ota documents carry none); see docs/real-hardware.md",
            file=sys.stderr,
        )
    return 0
