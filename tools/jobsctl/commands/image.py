"""``jobsctl image build|keygen|sign|info``: ESP32 app images and their ECDSA P-256 signatures."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import image
from ..errors import JobsctlError


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([kKmM]?)(i?B)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 65536, 64k, 8M)")
    return int(m.group(1)) << {"": 0, "k": 10, "K": 10, "m": 20, "M": 20}[m.group(2)]


def add_slot_options(p: argparse.ArgumentParser) -> None:
    """The OTA slot an image must fit: the 4 MiB OTA layout's unless told otherwise."""
    q = p.add_mutually_exclusive_group()
    q.add_argument(
        "--slot-size",
        type=parse_size,
        help=f"OTA slot size (default {image.SLOT_SIZE:#x}, ESP32_GENERIC's OTA variant)",
    )
    q.add_argument(
        "--partitions",
        type=Path,
        metavar="FILE",
        help="the boards' partition layout: partitions.csv, a partition-table .bin or the "
        "firmware .bin they were flashed with; the image must fit its smallest ota_N slot",
    )


def slot_size(args: argparse.Namespace) -> int:
    from ..flash import ota_slot_size

    if args.partitions is not None:
        return ota_slot_size(args.partitions)
    return int(args.slot_size or image.SLOT_SIZE)


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
    b.add_argument("--version", required=True, help="the version in the app descriptor")
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
    b.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="the image to write (an app image there is rebuilt; any other file is refused)",
    )
    add_slot_options(b)
    b.set_defaults(func=build)

    k = isub.add_parser("keygen", help="new ECDSA P-256 signing key (KEY) and KEY's .pub.pem")
    k.add_argument("key", type=Path, help="where to write the private key (PEM, mode 0600)")
    k.set_defaults(func=keygen)

    s = isub.add_parser(
        "sign",
        help="print the base64 DER ECDSA P-256 signature over SHA-256 of FILE (sig-sha256-ecdsa)",
    )
    s.add_argument("file", type=Path, help="the image (or bundle) to sign")
    s.add_argument("--key", type=Path, required=True, help="PEM private key (from keygen)")
    s.add_argument(
        "-o",
        "--output",
        type=Path,
        help="also write the signature here (replaces a signature, refuses any other file)",
    )
    s.set_defaults(func=sign)

    d = isub.add_parser(
        "delta",
        help="make a detools sequential patch from OLD to NEW that the device applies (delta OTA)",
        description=(
            "A detools sequential (bsdiff) patch; the board rebuilds NEW from the image it runs "
            "(OLD) while the patch streams in. heatshrink keeps a 2**WINDOW-byte window on the "
            "board (at most 2**12)."
        ),
    )
    d.add_argument("--from", dest="old", type=Path, required=True, help="the image boards run")
    d.add_argument("--to", dest="new", type=Path, required=True, help="the new image")
    d.add_argument("-o", "--output", type=Path, required=True, help="the patch file to write")
    d.add_argument(
        "--compression",
        choices=["heatshrink", "none"],
        default="heatshrink",
        help="heatshrink (default) or none",
    )
    d.add_argument("--window-bits", type=int, default=None, help="heatshrink window (4-12)")
    d.add_argument("--lookahead-bits", type=int, default=None, help="heatshrink lookahead")
    d.set_defaults(func=delta)

    i = isub.add_parser("info", help="check an app image (or .app-bin) and print what it holds")
    i.add_argument("file", type=Path, help="the app image to check")
    add_slot_options(i)
    i.set_defaults(func=info)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise JobsctlError(f"cannot read {path}: {exc.strerror}") from None


def _is_signature(data: bytes) -> bool:
    try:
        der = base64.b64decode(data.strip(), validate=True)
    except ValueError:
        return False
    return 8 <= len(der) <= 80 and der[0] == 0x30


def _replaceable(path: Path, what: str, holds_it: Callable[[bytes], bool]) -> None:
    """-o rewrites a file that holds what the command makes (an image rebuilt, a signature
    made again) and refuses any other: a typo in -o must not cost the user a file."""
    if not path.exists():
        return
    if path.is_file() and holds_it(_read(path)):
        return
    raise JobsctlError(f"{path} exists and is not {what}; not overwriting it")


def build(args: argparse.Namespace) -> int:
    _replaceable(args.output, "an app image", lambda b: image.problem(b) is None)
    limit = slot_size(args)
    if args.size is not None and args.size > limit:  # refused before anything is made
        raise JobsctlError(
            f"an image of {args.size} bytes does not fit the {limit}-byte OTA slot "
            "(--slot-size/--partitions give another layout)"
        )
    data = image.build_app_image(
        args.version, size=args.size, project=args.project, secure_version=args.secure_version
    )
    image.check_app_image(data, limit)
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
    if args.output:
        _replaceable(args.output, "a signature", _is_signature)
    sig = image.sign(_read(args.file), args.key)
    if args.output:
        args.output.write_text(sig + "\n")
    print(sig)
    return 0


def info(args: argparse.Namespace) -> int:
    data = _read(args.file)
    image.check_app_image(data, slot_size(args))
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


def delta(args: argparse.Namespace) -> int:
    from .. import delta as dl

    old, new = _read(args.old), _read(args.new)
    image.check_app_image(old)
    image.check_app_image(new)
    patch = dl.create(
        old,
        new,
        args.compression,
        args.window_bits if args.window_bits is not None else dl.WINDOW_BITS,
        args.lookahead_bits if args.lookahead_bits is not None else dl.LOOKAHEAD_BITS,
    )
    if args.output.exists():
        raise JobsctlError(f"{args.output} exists; not overwriting it")
    args.output.write_bytes(patch.data)
    out = {"file": str(args.output), **patch.document(""), "new_size": len(new)}
    del out["url"]
    out["new_sha256"] = hashlib.sha256(new).hexdigest()
    out["share"] = round(len(patch.data) / len(new), 4)
    print(json.dumps(out))
    return 0
