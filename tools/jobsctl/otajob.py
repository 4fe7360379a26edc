"""OTA jobs: sign a firmware image, upload it, and create the job the device's ``ota`` handler runs.

The job document (native schema, see the README) names the image by a pre-signed URL
placeholder, ``${aws:iot:s3-presigned-url-v2:https://s3.REGION.amazonaws.com/BUCKET/KEY}`` (the
regional form AWS documents now; the older global ``${aws:iot:s3-presigned-url:https://s3.
amazonaws.com/...}`` is still understood): AWS IoT (and the local service) replaces it with a
freshly signed URL each time it hands the document to a device, which is why the job also needs
a ``presignedUrlConfig``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from . import image
from .errors import JobsctlError

# The file of a job's stream (``job ota --protocol mqtt|both``) that holds a delta's patch; the
# full image is file 0.
DELTA_FILE_ID = 1
URL_LIFETIME_S = 3600  # the most AWS allows; a device asks for a new URL when one expires
# The largest bundle (tar) a board takes: lib/iotjobs/bundle.py's _MAX (a test pins the two).
BUNDLE_MAX = 1 << 20


def s3_url(bucket: str, key: str, region: str | None = None) -> str:
    """The object's S3 URL: regional (``s3.REGION.amazonaws.com``) when ``region`` is given."""
    host = f"s3.{region}.amazonaws.com" if region else "s3.amazonaws.com"
    return f"https://{host}/{bucket}/{key}"


def placeholder(url: str) -> str:
    """The pre-signed URL placeholder for an S3 URL: AWS's regional ``-v2`` form for a regional
    URL, the older global form for ``s3.amazonaws.com``."""
    regional = url.startswith("https://s3.") and not url.startswith("https://s3.amazonaws.com/")
    kind = "s3-presigned-url-v2" if regional else "s3-presigned-url"
    return "${aws:iot:" + kind + ":" + url + "}"


def object_key(data: bytes) -> str:
    """Content-addressed: the same image uploaded twice is one object."""
    return f"ota/{image.read_app_version(data)}-{hashlib.sha256(data).hexdigest()[:16]}.bin"


def document(data: bytes, url: str, signature: str | None) -> dict[str, Any]:
    """The native OTA job document for ``data`` served at ``url`` (an S3 URL or placeholder)."""
    doc: dict[str, Any] = {
        "operation": "ota",
        "url": url,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "version": image.read_app_version(data),
    }
    if signature is not None:
        doc["signature"] = signature
    return doc


def signing_key(key_dir: Path) -> Path:
    """``key_dir/signing.pem``, made on first use (its public half is ``signing.pub.pem``)."""
    key = Path(key_dir) / "signing.pem"
    if not key.exists():
        image.keygen(key)
    return key


def read_image(path: Path, slot_size: int | None = None) -> bytes:
    """The app image in ``path``, checked (and, with ``slot_size``, that it fits the slot)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise JobsctlError(f"cannot read {path}: {exc.strerror}") from None
    # A bad image never becomes a job (real .app-bin files pass); one too big for the boards'
    # OTA slot is refused here, before the upload, not by every board after the job exists.
    image.check_app_image(data, slot_size)
    return data


def check_bundle_size(tar: bytes) -> None:
    if len(tar) > BUNDLE_MAX:
        raise JobsctlError(
            f"the bundle is {len(tar)} bytes; a board takes at most {BUNDLE_MAX} "
            "(ship fewer or .mpy files)"
        )


def presigned_config(account_id: str, role_arn: str | None = None) -> dict[str, Any]:
    role = role_arn or f"arn:aws:iam::{account_id}:role/jobsctl-ota-download"
    return {"roleArn": role, "expiresInSec": URL_LIFETIME_S}


def upload(s3: Any, bucket: str, data: bytes, region: str | None = None) -> str:
    """Put ``data`` into ``bucket`` (content-addressed key); the object's S3 URL."""
    key = object_key(data)
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return s3_url(bucket, key, region)


def prepare(
    stack: Any,
    data: bytes,
    *,
    key_dir: Path | None = None,
    key: Path | None = None,
    window_bits: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """For a running local :class:`~jobsctl.stack.Stack`: upload, sign, and return
    ``(document, create_job extra parameters)``. With neither ``key`` nor ``key_dir`` the
    image is unsigned (devices without ``ota_key_file`` accept it on its SHA-256). With
    ``window_bits`` the upload is gzip-compressed with that window; size, hash and signature
    stay those of the image itself."""
    image.check_app_image(data)
    if key is None and key_dir is not None:
        key = signing_key(key_dir)
    signature = image.sign(data, key) if key is not None else None
    if window_bits is None:
        url = stack.upload(object_key(data), data)
    else:
        url = stack.upload(object_key(data) + ".gz", gzip_payload(data, window_bits))
    doc = document(data, placeholder(url), signature)
    if window_bits is not None:
        doc.update(compression="gzip", window_bits=window_bits)
    return doc, {"presignedUrlConfig": presigned_config(stack.endpoints["account_id"])}


# What `jobsctl job ota` sets unless told otherwise (README, "Rollout policies"): an execution
# still IN_PROGRESS an hour after it started ends TIMED_OUT, and the rollout stops (the job is
# canceled, its QUEUED executions with it) once 20 % of the boards that received it, and at least
# 5 of them, ended FAILED, REJECTED or TIMED_OUT.
OTA_IN_PROGRESS_TIMEOUT_MIN = 60
OTA_ABORT_PERCENT = 20.0
OTA_ABORT_MIN_EXECUTED = 5


# ---------------------------------------------------------------- application-file bundles


def build_bundle(files: dict[str, bytes]) -> bytes:
    """A ustar archive of ``{relative name: content}`` (what the device's bundle handler reads)."""
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def bundle_from_dir(folder: Path) -> dict[str, bytes]:
    """Every ``.py``/``.mpy`` file under ``folder``, by its path relative to it."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".py", ".mpy")
    }
    if not files:
        raise JobsctlError(f"{folder} has no .py or .mpy files")
    return files


def bundle_document(
    tar: bytes, url: str, version: str, signature: str | None = None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operation": "bundle",
        "url": url,
        "size": len(tar),
        "sha256": hashlib.sha256(tar).hexdigest(),
        "version": version,
    }
    if signature is not None:
        doc["signature"] = signature
    return doc


def prepare_bundle(
    stack: Any, tar: bytes, version: str, *, key: Path | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Like :func:`prepare`, for a bundle: upload, sign, ``(document, extra)``."""
    signature = image.sign(tar, key) if key is not None else None
    url = stack.upload(f"bundles/{version}-{hashlib.sha256(tar).hexdigest()[:16]}.tar", tar)
    doc = bundle_document(tar, placeholder(url), version, signature)
    return doc, {"presignedUrlConfig": presigned_config(stack.endpoints["account_id"])}


def gzip_payload(data: bytes, window_bits: int = 12) -> bytes:
    """gzip with a bounded window (2**window_bits bytes), as the document states it."""
    import zlib

    if not 9 <= window_bits <= 13:  # the device refuses larger windows (lib/iotjobs/ota.py)
        raise JobsctlError("the gzip window must be 9-13 bits")
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + window_bits)
    return c.compress(data) + c.flush()


# ---------------------------------------------------------------- AWS's afr_ota documents


def afr_document(
    data: bytes,
    signature: str,
    *,
    url: str | None = None,
    stream: str | None = None,
    file_id: int = 0,
    certfile: str = "",
) -> dict[str, Any]:
    """The ``afr_ota`` job document ``CreateOTAUpdate`` makes for one file: HTTP when ``url``
    is given, MQTT when ``stream`` is (both: the device picks by its ``ota_protocol``)."""
    protocols = (["MQTT"] if stream else []) + (["HTTP"] if url else [])
    if not protocols:
        raise JobsctlError("an OTA update needs a URL (HTTP), a stream (MQTT), or both")
    entry: dict[str, Any] = {
        "filepath": "/",
        "filesize": len(data),
        "fileid": file_id,
        "certfile": certfile,
        "fileType": 0,
        "sig-sha256-ecdsa": signature,
    }
    if url:
        entry["update_data_url"] = url
        entry["auth_scheme"] = "aws.s3.presigned"
    return {"afr_ota": {"protocols": protocols, "streamname": stream or "", "files": [entry]}}


def stream_files(bucket: str, key: str, file_id: int = 0) -> list[dict[str, Any]]:
    """``files`` of a ``CreateStream`` request for one object."""
    return [{"fileId": file_id, "s3Location": {"bucket": bucket, "key": key}}]


def stream_role(account_id: str, role_arn: str | None = None) -> str:
    return role_arn or f"arn:aws:iam::{account_id}:role/jobsctl-ota-stream"
