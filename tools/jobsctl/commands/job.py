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
from ..statedir import local_client
from . import print_json, state_dir_argument
from .image import add_slot_options, slot_size


def register(sub: Any) -> None:
    p = sub.add_parser("job", help="create and follow jobs (local stack or real AWS)")
    jsub = p.add_subparsers(dest="job_command", metavar="ACTION")
    jsub.required = True

    def add(name: str, helptext: str) -> argparse.ArgumentParser:
        q: argparse.ArgumentParser = jsub.add_parser(name, help=helptext)
        state_dir_argument(q, required=False, more="without it, real AWS (--region, --profile)")
        q.add_argument("--region", help="AWS region (real AWS only)")
        q.add_argument("--profile", help="AWS profile (real AWS only)")
        return q

    c = add("create", "create a job")
    c.add_argument("job_id", help="the job id (1-64 of [a-zA-Z0-9_-])")
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
    _policy_arguments(c, ota=False)
    c.set_defaults(func=create)

    o = add("ota", "sign and upload a firmware image, then create an OTA job for it")
    o.add_argument("job_id", help="the job id (1-64 of [a-zA-Z0-9_-])")
    o.add_argument(
        "--targets", nargs="+", required=True, metavar="TARGET", help="ARNs, thing or group names"
    )
    o.add_argument("--file", type=Path, required=True, help="ESP32 app image (.bin, .app-bin)")
    add_slot_options(o)
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
    o.add_argument(
        "--from",
        dest="delta_from",
        type=Path,
        metavar="OLD",
        help="delta OTA: also upload a patch from OLD (the image boards run) to --file",
    )
    o.add_argument(
        "--delta-compression",
        choices=["heatshrink", "none"],
        default="heatshrink",
        help="with --from: how the patch is compressed (default heatshrink)",
    )
    o.add_argument(
        "--no-full",
        action="store_true",
        help="with --from: offer no full image to fall back to when the patch fails",
    )
    o.add_argument("--bucket", help="S3 bucket for the image (default: the local stack's)")
    o.add_argument(
        "--role-arn", help="IAM role AWS IoT reads S3 with: pre-signed URLs, streams (real AWS)"
    )
    o.add_argument("--target-selection", choices=["SNAPSHOT", "CONTINUOUS"])
    o.add_argument("--max-per-minute", type=int, help="rollout: executions started per minute")
    _policy_arguments(o, ota=True)
    o.set_defaults(func=create_ota)

    b = add("bundle", "pack a folder of .py/.mpy files, sign, upload, create a bundle job")
    b.add_argument("job_id", help="the job id (1-64 of [a-zA-Z0-9_-])")
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
    d.add_argument("job_id", help="the job id (1-64 of [a-zA-Z0-9_-])")
    d.set_defaults(func=describe)

    ls = add("list", "list jobs")
    ls.add_argument(
        "--status", choices=["IN_PROGRESS", "CANCELED", "COMPLETED", "DELETION_IN_PROGRESS"]
    )
    ls.set_defaults(func=list_jobs)

    x = add("cancel", "cancel a job")
    x.add_argument("job_id", help="the job id (1-64 of [a-zA-Z0-9_-])")
    x.add_argument("--force", action="store_true", help="also cancel IN_PROGRESS executions")
    x.add_argument("--comment")
    x.add_argument("--reason-code")
    x.set_defaults(func=cancel)

    rm = add("delete", "delete a job")
    rm.add_argument("job_id", help="the job id (1-64 of [a-zA-Z0-9_-])")
    rm.add_argument("--force", action="store_true", help="delete even when IN_PROGRESS")
    rm.set_defaults(func=delete)

    e = add(
        "executions",
        "list the executions of a job (or of a thing with --thing), each with its "
        "statusDetails (the reason of a REJECTED or FAILED board)",
    )
    e.add_argument("job_id", nargs="?", help="the job (optional with --thing)")
    e.add_argument("--thing", help="list this thing's executions instead")
    e.add_argument("--status")
    e.set_defaults(func=executions)

    one = add("execution", "show one execution in full (status, statusDetails, times, version)")
    one.add_argument("job_id", help="the job")
    one.add_argument("thing", help="the thing whose execution it is")
    one.set_defaults(func=execution)


def _policy_arguments(p: argparse.ArgumentParser, ota: bool) -> None:
    """timeoutConfig, abortConfig and jobExecutionsRetryConfig flags (OTA: with defaults)."""
    from .. import otajob

    timeout = otajob.OTA_IN_PROGRESS_TIMEOUT_MIN if ota else None
    p.add_argument(
        "--in-progress-timeout",
        type=int,
        metavar="MIN",
        default=timeout,
        help="an execution IN_PROGRESS this long ends TIMED_OUT (1-10080)"
        + (f"; default {timeout}, 0 for none" if ota else ""),
    )
    pct = otajob.OTA_ABORT_PERCENT if ota else None
    p.add_argument(
        "--abort-percent",
        type=float,
        metavar="PCT",
        default=pct,
        help="cancel the job once this share of the things that received it ended FAILED,"
        " REJECTED or TIMED_OUT" + (f" (default {pct:g}; 0 for no abort)" if ota else ""),
    )
    least = otajob.OTA_ABORT_MIN_EXECUTED if ota else 1
    p.add_argument(
        "--abort-min-things",
        type=int,
        metavar="N",
        default=least,
        help=f"... but only once at least N things received it (default {least})",
    )
    p.add_argument(
        "--retries",
        type=int,
        metavar="N",
        help="run a FAILED or TIMED_OUT execution again, up to N times (0-10)",
    )
    p.add_argument("--start-time", metavar="UTC", help="roll out from YYYY-MM-DDTHH:MM (UTC)")
    p.add_argument("--end-time", metavar="UTC", help="stop rolling out at YYYY-MM-DDTHH:MM (UTC)")
    p.add_argument(
        "--end-behavior",
        choices=["STOP_ROLLOUT", "CANCEL", "FORCE_CANCEL"],
        help="what the end time does (default STOP_ROLLOUT)",
    )
    p.add_argument(
        "--window",
        nargs=2,
        action="append",
        metavar=("CRON", "MINUTES"),
        help="a maintenance window: release executions only from each CRON start"
        " ('cron(0 2 ? * SUN *)', UTC) for MINUTES; repeatable",
    )


def _policies(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.in_progress_timeout:
        params["timeoutConfig"] = {"inProgressTimeoutInMinutes": args.in_progress_timeout}
    if args.abort_percent:
        criterion = {
            "failureType": "ALL",
            "action": "CANCEL",
            "thresholdPercentage": args.abort_percent,
            "minNumberOfExecutedThings": args.abort_min_things,
        }
        params["abortConfig"] = {"criteriaList": [criterion]}
    if args.retries:
        retry = {"failureType": "ALL", "numberOfRetries": args.retries}
        params["jobExecutionsRetryConfig"] = {"criteriaList": [retry]}
    scheduling: dict[str, Any] = {}
    for flag, key in (
        ("start_time", "startTime"),
        ("end_time", "endTime"),
        ("end_behavior", "endBehavior"),
    ):
        if getattr(args, flag):
            scheduling[key] = getattr(args, flag)
    if args.window:
        windows = []
        for cron, minutes in args.window:
            if not minutes.isdigit():
                raise JobsctlError(f"--window {cron} {minutes}: MINUTES must be a number (1-1430)")
            windows.append({"startTime": cron, "durationInMinutes": int(minutes)})
        scheduling["maintenanceWindows"] = windows
    if scheduling:
        params["schedulingConfig"] = scheduling
    return params


def client(args: argparse.Namespace) -> Any:
    if args.state_dir is not None:
        return args.state_dir.client("iot")
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
    params.update(_policies(args))
    print_json(iot.create_job(**params))
    return 0


def _storage(args: argparse.Namespace) -> tuple[Any, str, str, str | None, str]:
    """(s3 client, bucket, account id, role ARN, region) for the local stack or real AWS."""
    if args.state_dir is not None:
        ep = args.state_dir.endpoints()
        s3 = local_client("s3", ep)
        bucket, account, role = args.bucket or ep["bucket"], str(ep["account_id"]), args.role_arn
        region = str(ep["region"])
    else:
        if not (args.bucket and args.role_arn):
            raise JobsctlError("real AWS needs --bucket and --role-arn (S3 read access)")
        session = boto3.Session(profile_name=args.profile, region_name=args.region)
        if not session.region_name:  # the regional pre-signed URL names it
            raise JobsctlError(
                "no AWS region: give --region or set AWS_REGION (or a region in the profile)"
            )
        s3, bucket, account, role = session.client("s3"), args.bucket, "", args.role_arn
        region = session.region_name
    return s3, bucket, account, role, region


def create_bundle(args: argparse.Namespace) -> int:
    from .. import image, otajob

    tar = otajob.build_bundle(otajob.bundle_from_dir(args.dir))
    otajob.check_bundle_size(tar)
    signature = image.sign(tar, args.key) if args.key else None
    s3, bucket, account, role, region = _storage(args)
    iot = client(args)
    targets = [resolve_target(iot, t) for t in args.targets]
    key = f"bundles/{args.version}-{hashlib.sha256(tar).hexdigest()[:16]}.tar"
    s3.put_object(Bucket=bucket, Key=key, Body=tar)
    url = otajob.placeholder(otajob.s3_url(bucket, key, region))
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
    data = otajob.read_image(args.file, slot_size(args))
    patch = _delta_patch(args, data)  # before anything is uploaded
    signature = image.sign(data, args.key) if args.key else None
    s3, bucket, account, role, region = _storage(args)
    iot = client(args)
    targets = [resolve_target(iot, t) for t in args.targets]
    if args.gzip_window is None:
        url = otajob.upload(s3, bucket, data, region)
    else:
        key = otajob.object_key(data) + ".gz"
        s3.put_object(Bucket=bucket, Key=key, Body=otajob.gzip_payload(data, args.gzip_window))
        url = otajob.s3_url(bucket, key, region)
    doc = otajob.document(data, otajob.placeholder(url), signature)
    if args.gzip_window is not None:
        doc.update(compression="gzip", window_bits=args.gzip_window)
    patch_key = None if patch is None else _add_delta(args, s3, bucket, region, patch, data, doc)
    if args.protocol != "http":
        # A stream named like the job, devices fetch it over MQTT: the image as file 0 (unless
        # --no-full), a delta's patch as file 1.
        full = "url" in doc
        files = otajob.stream_files(bucket, otajob.object_key(data)) if full else []
        if patch_key is not None:
            files += otajob.stream_files(bucket, patch_key, otajob.DELTA_FILE_ID)
        iot.create_stream(
            streamId=args.job_id,
            description=f"OTA {doc['version']} for job {args.job_id}",
            files=files,
            roleArn=otajob.stream_role(account, role),
        )
        if full:
            doc.update(stream=args.job_id, file_id=0)
        if patch_key is not None:
            doc["delta"].update(stream=args.job_id, file_id=otajob.DELTA_FILE_ID)
        if args.protocol == "mqtt":
            doc.pop("url", None)
            doc.get("delta", {}).pop("url", None)
    if args.allow_downgrade:
        doc["allow_downgrade"] = True
    params: dict[str, Any] = {
        "jobId": args.job_id,
        "targets": targets,
        "document": json.dumps(doc),
        "description": f"OTA to {doc['version']}",
    }
    if "url" in doc or "url" in doc.get("delta", {}):  # a pre-signed URL placeholder to fill
        params["presignedUrlConfig"] = otajob.presigned_config(account, role)
    if args.target_selection:
        params["targetSelection"] = args.target_selection
    if args.max_per_minute is not None:
        params["jobExecutionsRolloutConfig"] = {"maximumPerMinute": args.max_per_minute}
    params.update(_policies(args))
    print_json({**iot.create_job(**params), "document": doc})
    return 0


def _delta_patch(args: argparse.Namespace, new: bytes) -> Any:
    """The patch from ``--from`` to ``new`` (a :class:`jobsctl.delta.Patch`), or None."""
    from .. import delta, otajob

    if args.delta_from is None:
        if args.no_full:
            raise JobsctlError("--no-full needs --from OLD (a delta job)")
        return None
    return delta.create(otajob.read_image(args.delta_from), new, args.delta_compression)


def _add_delta(
    args: argparse.Namespace,
    s3: Any,
    bucket: str,
    region: str | None,
    patch: Any,
    new: bytes,
    doc: dict[str, Any],
) -> str:
    """Upload ``patch`` and put its ``delta`` object into ``doc``; the patch's object key."""
    from .. import delta, otajob

    key = delta.object_key(patch, new)
    s3.put_object(Bucket=bucket, Key=key, Body=patch.data)
    doc["delta"] = patch.document(otajob.placeholder(otajob.s3_url(bucket, key, region)))
    if args.no_full:
        del doc["url"]
    return key


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
    # The lists carry no statusDetails; the reason a board gave is what an operator needs.
    for s in summaries:
        job_id = s.get("jobId", args.job_id)
        thing = args.thing or str(s.get("thingArn", "")).rpartition("/")[2]
        ex = iot.describe_job_execution(jobId=job_id, thingName=thing)["execution"]
        s["statusDetails"] = ex.get("statusDetails", {}).get("detailsMap", {})
    print_json({"executionSummaries": summaries})
    return 0


def execution(args: argparse.Namespace) -> int:
    iot = client(args)
    print_json(iot.describe_job_execution(jobId=args.job_id, thingName=args.thing))
    return 0
