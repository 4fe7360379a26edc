"""``jobsctl image build|keygen|sign|info``: ESP32 app images and their ECDSA P-256 signatures."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from .. import image
from ..errors import JobsctlError


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([kKmM]?)(i?B)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 65536, 64k, 8M)")
    return int(m.group(1)) << {"": 0, "k": 10, "K": 10, "m": 20, "M": 20}[m.group(2)]


def register(sub: Any) -> None:
    p = sub.add_parser("image", help="ESP32 app images: build, sign, inspect")
    isub = p.add_subparsers(dest="image_command", metavar="ACTION")
    isub.required = True

    b = isub.add_parser(
        "build",
        help="make a valid ESP32 app image carrying VERSION (for the simulation and tests)",
        description=(
            "Header, three segments (the first starts with the app descriptor holding the "
            "version), checksum and appended SHA-256, as `esptool image-info` validates them."
        ),
    )
    b.add_argument("--version", required=True)
    b.add_argument(
        "--size", type=parse_size, help="approximate image size, e.g. 1M (default: small)"
    )
    b.add_argument("--project", default="iotjobs-sim")
    b.add_argument(
        "--secure-version",
        type=int,
        default=0,
        metavar="N",
        help="the app descriptor's secure_version: devices refuse images below the highest"
        " they have confirmed (default 0)",
    )
    b.add_argument("-o", "--output", type=Path, required=True)
    b.set_defaults(func=build)

    k = isub.add_parser("keygen", help="new ECDSA P-256 signing key (KEY) and KEY's .pub.pem")
    k.add_argument("key", type=Path)
    k.set_defaults(func=keygen)

    s = isub.add_parser(
        "sign",
        help="print the base64 DER ECDSA P-256 signature over SHA-256 of FILE (sig-sha256-ecdsa)",
    )
    s.add_argument("file", type=Path)
    s.add_argument("--key", type=Path, required=True, help="PEM private key (from keygen)")
    s.add_argument("-o", "--output", type=Path, help="also write the signature here")
    s.set_defaults(func=sign)

    i = isub.add_parser("info", help="check an app image (or .app-bin) and print what it holds")
    i.add_argument("file", type=Path)
    i.add_argument("--slot-size", type=parse_size, help="also check that it fits an OTA slot")
    i.set_defaults(func=info)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise JobsctlError(f"cannot read {path}: {exc.strerror}") from None


def build(args: argparse.Namespace) -> int:
    data = image.build_app_image(
        args.version, size=args.size, project=args.project, secure_version=args.secure_version
    )
    args.output.write_bytes(data)
    print(
        json.dumps(
            {
                "file": str(args.output),
                "version": args.version,
                "secure_version": args.secure_version,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    )
    return 0


def keygen(args: argparse.Namespace) -> int:
    pub = image.keygen(args.key)
    print(json.dumps({"private_key": str(args.key), "public_key": str(pub)}))
    return 0


def sign(args: argparse.Namespace) -> int:
    sig = image.sign(_read(args.file), args.key)
    if args.output:
        args.output.write_text(sig + "\n")
    print(sig)
    return 0


def info(args: argparse.Namespace) -> int:
    data = _read(args.file)
    image.check_app_image(data, args.slot_size)
    print(
        json.dumps(
            {
                "file": str(args.file),
                "version": image.read_app_version(data),
                "secure_version": image.read_secure_version(data),
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "valid": True,
            }
        )
    )
    return 0
