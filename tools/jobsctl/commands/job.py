"""``jobsctl job ...``: operator commands over boto3's ``iot`` client.

With ``--state-dir DIR`` they talk to the local stack (endpoint, credentials and CA from
DIR/endpoints.json); without it to real AWS IoT with boto3's defaults (profile, region).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from ..errors import JobsctlError
from ..stack import iot_client
from . import load_endpoints, print_json


def register(sub: Any) -> None:
    p = sub.add_parser("job", help="create and follow jobs (local stack or real AWS)")
    jsub = p.add_subparsers(dest="job_command", metavar="ACTION")
    jsub.required = True

    def add(name: str, helptext: str) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = jsub.add_parser(name, help=helptext)
        q.add_argument("--state-dir", type=Path, help="local stack (default: real AWS)")
        q.add_argument("--region", help="AWS region (real AWS only)")
        q.add_argument("--profile", help="AWS profile (real AWS only)")
        return q

    c = add("create", "create a job")
    c.add_argument("job_id")
    c.add_argument(
        "--targets", nargs="+", required=True, metavar="TARGET", help="ARNs, thing or group names"
    )
    doc = c.add_mutually_exclusive_group(required=True)
    doc.add_argument("--document", type=Path, help="job document file (JSON)")
    doc.add_argument("--document-json", help="job document as a JSON string")
    doc.add_argument("--document-source", help="https://s3.amazonaws.com/BUCKET/KEY")
    c.add_argument("--description")
    c.add_argument("--target-selection", choices=["SNAPSHOT", "CONTINUOUS"])
    c.add_argument("--max-per-minute", type=int, help="rollout: executions started per minute")
    c.add_argument("--presigned-role-arn", help="role for pre-signed URLs (real AWS)")
    c.add_argument("--presigned-expires", type=int, help="pre-signed URL lifetime, 60-3600 s")
    c.set_defaults(func=create)

    o = add("ota", "sign and upload a firmware image, then create an OTA job for it")
    o.add_argument("job_id")
    o.add_argument(
        "--targets", nargs="+", required=True, metavar="TARGET", help="ARNs, thing or group names"
    )
    o.add_argument("--file", type=Path, required=True, help="ESP32 app image (.bin, .app-bin)")
    o.add_argument("--key", type=Path, help="ECDSA P-256 private key (PEM): sign the image")
    o.add_argument(
        "--gzip-window",
        type=int,
        metavar="BITS",
        help="upload gzip-compressed with a 2**BITS-byte window (9-13); the device inflates it",
    )
    o.add_argument(
        "--protocol",
        choices=["http", "mqtt", "both"],
        default="http",
        help="how devices download: HTTPS (pre-signed URL), MQTT (an AWS IoT stream over the"
        " device's MQTT session), or both (each device picks by its ota_protocol; default http)",
    )
    o.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="let devices whose config has ota_allow_downgrade install a lower secure_version",
    )
    o.add_argument("--bucket", help="S3 bucket for the image (default: the local stack's)")
    o.add_argument(
        "--role-arn", help="IAM role AWS IoT reads S3 with: pre-signed URLs, streams (real AWS)"
    )
    o.add_argument("--target-selection", choices=["SNAPSHOT", "CONTINUOUS"])
    o.add_argument("--max-per-minute", type=int, help="rollout: executions started per minute")
    o.set_defaults(func=create_ota)

    b = add("bundle", "pack a folder of .py/.mpy files, sign, upload, create a bundle job")
    b.add_argument("job_id")
    b.add_argument(
        "--targets", nargs="+", required=True, metavar="TARGET", help="ARNs, thing or group names"
    )
    b.add_argument("--dir", type=Path, required=True, help="the application folder to ship")
    b.add_argument("--version", required=True, help="the application's version (reported)")
    b.add_argument("--key", type=Path, help="ECDSA P-256 private key (PEM): sign the bundle")
    b.add_argument("--bucket", help="S3 bucket (default: the local stack's)")
    b.add_argument("--role-arn", help="IAM role AWS IoT pre-signs the URL with (real AWS)")
    b.set_defaults(func=create_bundle)

    d = add("describe", "describe a job")
    d.add_argument("job_id")
    d.set_defaults(func=describe)

    ls = add("list", "list jobs")
    ls.add_argument(
        "--status", choices=["IN_PROGRESS", "CANCELED", "COMPLETED", "DELETION_IN_PROGRESS"]
    )
    ls.set_defaults(func=list_jobs)

    x = add("cancel", "cancel a job")
    x.add_argument("job_id")
    x.add_argument("--force", action="store_true", help="also cancel IN_PROGRESS executions")
    x.add_argument("--comment")
    x.add_argument("--reason-code")
    x.set_defaults(func=cancel)

    rm = add("delete", "delete a job")
    rm.add_argument("job_id")
    rm.add_argument("--force", action="store_true", help="delete even when IN_PROGRESS")
    rm.set_defaults(func=delete)

    e = add("executions", "list the executions of a job (or of a thing with --thing)")
    e.add_argument("job_id", nargs="?")
    e.add_argument("--thing", help="list this thing's executions instead")
    e.add_argument("--status")
    e.set_defaults(func=executions)


def client(args: argparse.Namespace) -> Any:
    if args.state_dir is not None:
        return iot_client(load_endpoints(args.state_dir))
    session = boto3.Session(profile_name=args.profile, region_name=args.region)
    return session.client("iot")


def _is_not_found(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException"


def resolve_target(iot: Any, target: str) -> str:
    """An ARN as is; a name as the ARN of the thing, or else of the thing group, so named."""
    if target.startswith("arn:"):
        return target
    try:
        return str(iot.describe_thing(thingName=target)["thingArn"])
    except ClientError as exc:
        if not _is_not_found(exc):
            raise
    try:
        return str(iot.describe_thing_group(thingGroupName=target)["thingGroupArn"])
    except ClientError as exc:
        if not _is_not_found(exc):
            raise
    raise JobsctlError(f"no thing or thing group is named {target!r}")


def _document(args: argparse.Namespace) -> dict[str, str]:
    if args.document_source:
        return {"documentSource": args.document_source}
    if args.document is not None:
        try:
            text = args.document.read_text()
        except OSError as exc:
            raise JobsctlError(f"cannot read {args.document}: {exc.strerror}") from None
    else:
        text = args.document_json
    try:
        json.loads(text)
    except ValueError as exc:
        raise JobsctlError(f"the job document is not valid JSON: {exc}") from None
    return {"document": text}


def create(args: argparse.Namespace) -> int:
    iot = client(args)
    params: dict[str, Any] = {
        "jobId": args.job_id,
        "targets": [resolve_target(iot, t) for t in args.targets],
        **_document(args),
    }
    if args.description is not None:
        params["description"] = args.description
    if args.target_selection:
        params["targetSelection"] = args.target_selection
    if args.max_per_minute is not None:
        params["jobExecutionsRolloutConfig"] = {"maximumPerMinute": args.max_per_minute}
    if args.presigned_role_arn or args.presigned_expires is not None:
        presigned: dict[str, Any] = {}
        if args.presigned_role_arn:
            presigned["roleArn"] = args.presigned_role_arn
        if args.presigned_expires is not None:
            presigned["expiresInSec"] = args.presigned_expires
        params["presignedUrlConfig"] = presigned
    print_json(iot.create_job(**params))
    return 0


def _storage(args: argparse.Namespace) -> tuple[Any, str, str, str | None]:
    """(s3 client, bucket, account id, role ARN) for the local stack or real AWS."""
    from botocore.config import Config

    if args.state_dir is not None:
        ep = load_endpoints(args.state_dir)
        s3 = boto3.client(
            "s3",
            endpoint_url=ep["s3_url"],
            region_name=ep["region"],
            aws_access_key_id=ep["aws_access_key_id"],
            aws_secret_access_key=ep["aws_secret_access_key"],
            verify=ep["ca_file"],
            config=Config(s3={"addressing_style": "path"}),
        )
        bucket, account, role = args.bucket or ep["bucket"], str(ep["account_id"]), args.role_arn
    else:
        if not (args.bucket and args.role_arn):
            raise JobsctlError("real AWS needs --bucket and --role-arn (S3 read access)")
        session = boto3.Session(profile_name=args.profile, region_name=args.region)
        s3, bucket, account, role = session.client("s3"), args.bucket, "", args.role_arn
    return s3, bucket, account, role


def create_bundle(args: argparse.Namespace) -> int:
    from .. import image, otajob

    tar = otajob.build_bundle(otajob.bundle_from_dir(args.dir))
    signature = image.sign(tar, args.key) if args.key else None
    s3, bucket, account, role = _storage(args)
    iot = client(args)
    targets = [resolve_target(iot, t) for t in args.targets]
    key = f"bundles/{args.version}-{hashlib.sha256(tar).hexdigest()[:16]}.tar"
    s3.put_object(Bucket=bucket, Key=key, Body=tar)
    url = otajob.placeholder(otajob.s3_url(bucket, key))
    doc = otajob.bundle_document(tar, url, args.version, signature)
    out = iot.create_job(
        jobId=args.job_id,
        targets=targets,
        document=json.dumps(doc),
        description=f"app files {args.version}",
        presignedUrlConfig=otajob.presigned_config(account, role),
    )
    print_json({**out, "document": doc})
    return 0


def create_ota(args: argparse.Namespace) -> int:
    from .. import image, otajob

    if args.gzip_window is not None and args.protocol != "http":
        raise JobsctlError("--gzip-window works with --protocol http only")
    data = otajob.read_image(args.file)
    signature = image.sign(data, args.key) if args.key else None
    s3, bucket, account, role = _storage(args)
    iot = client(args)
    targets = [resolve_target(iot, t) for t in args.targets]
    if args.gzip_window is None:
        url = otajob.upload(s3, bucket, data)
    else:
        key = otajob.object_key(data) + ".gz"
        s3.put_object(Bucket=bucket, Key=key, Body=otajob.gzip_payload(data, args.gzip_window))
        url = otajob.s3_url(bucket, key)
    doc = otajob.document(data, otajob.placeholder(url), signature)
    if args.gzip_window is not None:
        doc.update(compression="gzip", window_bits=args.gzip_window)
    if args.protocol != "http":
        # A stream of the same object, named like the job: devices fetch it over MQTT.
        iot.create_stream(
            streamId=args.job_id,
            description=f"OTA {doc['version']} for job {args.job_id}",
            files=otajob.stream_files(bucket, otajob.object_key(data)),
            roleArn=otajob.stream_role(account, role),
        )
        doc.update(stream=args.job_id, file_id=0)
        if args.protocol == "mqtt":
            del doc["url"]
    if args.allow_downgrade:
        doc["allow_downgrade"] = True
    params: dict[str, Any] = {
        "jobId": args.job_id,
        "targets": targets,
        "document": json.dumps(doc),
        "description": f"OTA to {doc['version']}",
    }
    if "url" in doc:
        params["presignedUrlConfig"] = otajob.presigned_config(account, role)
    if args.target_selection:
        params["targetSelection"] = args.target_selection
    if args.max_per_minute is not None:
        params["jobExecutionsRolloutConfig"] = {"maximumPerMinute": args.max_per_minute}
    print_json({**iot.create_job(**params), "document": doc})
    return 0


def describe(args: argparse.Namespace) -> int:
    print_json(client(args).describe_job(jobId=args.job_id))
    return 0


def list_jobs(args: argparse.Namespace) -> int:
    iot = client(args)
    kwargs = {"status": args.status} if args.status else {}
    jobs: list[Any] = []
    for page in iot.get_paginator("list_jobs").paginate(**kwargs):
        jobs += page.get("jobs", [])
    print_json({"jobs": jobs})
    return 0


def cancel(args: argparse.Namespace) -> int:
    kwargs: dict[str, Any] = {"jobId": args.job_id, "force": args.force}
    if args.comment:
        kwargs["comment"] = args.comment
    if args.reason_code:
        kwargs["reasonCode"] = args.reason_code
    print_json(client(args).cancel_job(**kwargs))
    return 0


def delete(args: argparse.Namespace) -> int:
    client(args).delete_job(jobId=args.job_id, force=args.force)
    print_json({"jobId": args.job_id, "deleted": True})
    return 0


def executions(args: argparse.Namespace) -> int:
    iot = client(args)
    kwargs: dict[str, Any] = {"status": args.status} if args.status else {}
    if args.thing:
        if args.job_id:
            kwargs["jobId"] = args.job_id
        name, kwargs["thingName"] = "list_job_executions_for_thing", args.thing
    elif args.job_id:
        name, kwargs["jobId"] = "list_job_executions_for_job", args.job_id
    else:
        raise JobsctlError("give a JOB_ID or --thing NAME")
    summaries: list[Any] = []
    for page in iot.get_paginator(name).paginate(**kwargs):
        summaries += page.get("executionSummaries", [])
    print_json({"executionSummaries": summaries})
    return 0
