"""OTA updates as AWS IoT makes them: ``CreateOTAUpdate`` & co (shapes from botocore's model).

``CreateOTAUpdate`` with customer-signed files (``codeSigning.customCodeSigning``) makes what
AWS makes: for the MQTT protocol a stream ``AFR_OTA-<uuid>`` of the files that are in S3 (or
uses the stream a file names), and a job ``AFR_OTA-<otaUpdateId>`` whose document is
``{"afr_ota": {"protocols", "streamname", "files": [{"filepath", "filesize", "fileid",
"certfile", "fileType", "update_data_url", "auth_scheme", "sig-sha256-ecdsa"}]}}``, with a
pre-signed URL placeholder for HTTP (the job's ``presignedUrlConfig`` takes the update's role).
The local service creates both at once: ``CreateOTAUpdate`` answers ``CREATE_PENDING`` as AWS
does, and ``GetOTAUpdate`` already shows ``CREATE_COMPLETE``. AWS Signer signing
(``awsSignerJobId``, ``startSigningJobParameter``) is not available locally.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from .common import ACCOUNT_ID, REGION, job_arn
from .errors import ApiError, invalid, not_found
from .model import Model
from .streams import Streams

OPERATIONS = ("CreateOTAUpdate", "GetOTAUpdate", "ListOTAUpdates", "DeleteOTAUpdate")
JOB_PREFIX = "AFR_OTA-"
URL_LIFETIME_S = 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ota_updates (
  ota_id TEXT PRIMARY KEY, info TEXT NOT NULL, job_id TEXT NOT NULL, stream_id TEXT,
  stream_created INTEGER NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL,
  updated_at REAL NOT NULL);
"""


def ota_arn(ota_id: str) -> str:
    return f"arn:aws:iot:{REGION}:{ACCOUNT_ID}:otaupdate/{ota_id}"


class OtaUpdates:
    def __init__(self, model: Model, streams: Streams) -> None:
        self.model = model
        self.streams = streams
        with model.lock:
            model.db.executescript(_SCHEMA)

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "CreateOTAUpdate": self.create,
            "GetOTAUpdate": lambda p: self.get(p["otaUpdateId"]),
            "ListOTAUpdates": self.list_updates,
            "DeleteOTAUpdate": self.delete,
        }

    # ---------------------------------------------------------------- create

    def create(self, p: dict[str, Any]) -> dict[str, Any]:
        ota_id = p["otaUpdateId"]
        job_id = JOB_PREFIX + ota_id
        if len(job_id) > 64:
            raise invalid(f"otaUpdateId {ota_id} is too long: its job id {job_id} exceeds 64.")
        with self.model.lock:
            if self.model.db.execute(
                "SELECT 1 FROM ota_updates WHERE ota_id = ?", (ota_id,)
            ).fetchone():
                raise ApiError(
                    "ResourceAlreadyExistsException", 409, f"OTA update {ota_id} already exists."
                )
        protocols = p.get("protocols") or ["MQTT"]
        if len(set(protocols)) != len(protocols):
            raise invalid("protocols lists a protocol twice.")
        files = p["files"]
        entries, s3_files, stream_id = self._files(files, protocols)
        stream_created = False
        if "MQTT" in protocols and stream_id is None:
            stream_id = "AFR_OTA-" + str(uuid.uuid4())
            self.streams.create(
                {
                    "streamId": stream_id,
                    "description": f"OTA update {ota_id}",
                    "files": s3_files,
                    "roleArn": p["roleArn"],
                }
            )
            stream_created = True
        document = {
            "afr_ota": {
                "protocols": protocols,
                "streamname": stream_id if "MQTT" in protocols else "",
                "files": entries,
            }
        }
        req: dict[str, Any] = {
            "targets": p["targets"],
            "document": json.dumps(document, separators=(",", ":")),
            "targetSelection": p.get("targetSelection") or "SNAPSHOT",
            "description": p.get("description") or f"OTA update {ota_id}",
        }
        if "HTTP" in protocols:
            expires = (p.get("awsJobPresignedUrlConfig") or {}).get("expiresInSec")
            req["presignedUrlConfig"] = {
                "roleArn": p["roleArn"],
                "expiresInSec": expires or URL_LIFETIME_S,
            }
        rate = (p.get("awsJobExecutionsRolloutConfig") or {}).get("maximumPerMinute")
        if rate:
            req["jobExecutionsRolloutConfig"] = {"maximumPerMinute": rate}
        timeout = (p.get("awsJobTimeoutConfig") or {}).get("inProgressTimeoutInMinutes")
        if timeout:
            req["timeoutConfig"] = {"inProgressTimeoutInMinutes": timeout}
        if p.get("awsJobAbortConfig"):
            raise invalid("awsJobAbortConfig is not supported by the local service.")
        try:
            self.model.create_job(job_id, req)
        except ApiError:
            if stream_created:
                self.streams.delete({"streamId": stream_id})
            raise
        now = self.model.now()
        info = {
            "otaUpdateId": ota_id,
            "otaUpdateArn": ota_arn(ota_id),
            "description": p.get("description"),
            "targets": p["targets"],
            "protocols": protocols,
            "targetSelection": req["targetSelection"],
            "otaUpdateFiles": files,
            "awsIotJobId": job_id,
            "awsIotJobArn": job_arn(job_id),
            "additionalParameters": p.get("additionalParameters"),
            "awsJobExecutionsRolloutConfig": p.get("awsJobExecutionsRolloutConfig"),
            "awsJobPresignedUrlConfig": p.get("awsJobPresignedUrlConfig"),
        }
        with self.model.lock, self.model.store.tx() as db:
            db.execute(
                "INSERT INTO ota_updates VALUES (?, ?, ?, ?, ?, 'CREATE_COMPLETE', ?, ?)",
                (ota_id, json.dumps(info), job_id, stream_id, int(stream_created), now, now),
            )
        return {
            "otaUpdateId": ota_id,
            "awsIotJobId": job_id,
            "otaUpdateArn": ota_arn(ota_id),
            "awsIotJobArn": job_arn(job_id),
            "otaUpdateStatus": "CREATE_PENDING",
        }

    def _files(
        self, files: list[dict[str, Any]], protocols: list[str]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
        """-> (the document's file entries, the S3 files of a new stream, an existing stream)."""
        entries: list[dict[str, Any]] = []
        s3_files: list[dict[str, Any]] = []
        named = {
            (f.get("fileLocation") or {}).get("stream", {}).get("streamId")
            for f in files
            if (f.get("fileLocation") or {}).get("stream")
        }
        if len(named) > 1:
            raise invalid("All files of an OTA update must come from one stream.")
        stream_id = named.pop() if named else None
        if stream_id is not None and any(
            not (f.get("fileLocation") or {}).get("stream") for f in files
        ):
            raise invalid("Files of an OTA update come either all from a stream or all from S3.")
        for index, f in enumerate(files):
            where = f.get("fileLocation") or {}
            if where.get("stream"):
                s3, file_id = self._stream_file(where["stream"])
            elif where.get("s3Location"):
                s3, file_id = where["s3Location"], index
                if not s3.get("bucket") or not s3.get("key"):
                    raise invalid(f"File {index}: s3Location needs a bucket and a key.")
                s3_files.append({"fileId": file_id, "s3Location": s3})
            else:
                raise invalid(f"File {index}: fileLocation needs a stream or an s3Location.")
            size = len(self.streams._read(s3["bucket"], s3["key"]))
            entry: dict[str, Any] = {
                "filepath": f.get("fileName") or "/",
                "filesize": size,
                "fileid": file_id,
                "certfile": "",
                "fileType": f.get("fileType", 0),
            }
            if "HTTP" in protocols:
                url = f"https://s3.amazonaws.com/{s3['bucket']}/{s3['key']}"
                entry["update_data_url"] = "${aws:iot:s3-presigned-url:" + url + "}"
                entry["auth_scheme"] = "aws.s3.presigned"
            signing = f.get("codeSigning") or {}
            if signing.get("awsSignerJobId") or signing.get("startSigningJobParameter"):
                raise invalid(
                    f"File {index}: AWS Signer is not available locally; sign the image"
                    " yourself and give codeSigning.customCodeSigning."
                )
            custom = signing.get("customCodeSigning")
            if custom:
                hash_alg = (custom.get("hashAlgorithm") or "SHA256").upper().replace("-", "")
                sig_alg = (custom.get("signatureAlgorithm") or "ECDSA").upper()
                if hash_alg != "SHA256" or sig_alg != "ECDSA":
                    raise invalid(
                        f"File {index}: only SHA256 with ECDSA (sig-sha256-ecdsa) is supported,"
                        f" not {hash_alg} with {sig_alg}."
                    )
                signature = (custom.get("signature") or {}).get("inlineDocument")
                if not isinstance(signature, str) or not signature:
                    raise invalid(
                        f"File {index}: customCodeSigning needs signature.inlineDocument."
                    )
                entry["sig-sha256-ecdsa"] = signature  # base64 on the wire, as the device wants
                chain = custom.get("certificateChain") or {}
                entry["certfile"] = chain.get("certificateName") or ""
            if f.get("attributes"):
                entry["attr"] = f["attributes"]
            entries.append(entry)
        return entries, s3_files, stream_id

    def _stream_file(self, ref: dict[str, Any]) -> tuple[dict[str, Any], int]:
        found = self.streams.lookup(ref.get("streamId") or "")
        if found is None:
            raise invalid(f"Stream {ref.get('streamId')} does not exist.")
        file_id = int(ref.get("fileId") or 0)
        for f in found[2]:
            if f["fileId"] == file_id:
                return f["s3Location"], file_id
        raise invalid(f"Stream {ref.get('streamId')} has no file {file_id}.")

    # ---------------------------------------------------------------- read, list, delete

    def _row(self, ota_id: str) -> Any:
        with self.model.lock:
            row = self.model.db.execute(
                "SELECT * FROM ota_updates WHERE ota_id = ?", (ota_id,)
            ).fetchone()
        if row is None:
            raise not_found(f"OTA update {ota_id} does not exist.")
        return row

    def get(self, ota_id: str) -> dict[str, Any]:
        row = self._row(ota_id)
        info = {k: v for k, v in json.loads(row["info"]).items() if v is not None}
        info.update(
            otaUpdateStatus=row["status"],
            creationDate=row["created_at"],
            lastModifiedDate=row["updated_at"],
        )
        return {"otaUpdateInfo": info}

    def list_updates(self, p: dict[str, Any]) -> dict[str, Any]:
        with self.model.lock:
            rows = self.model.db.execute(
                "SELECT * FROM ota_updates ORDER BY created_at, ota_id"
            ).fetchall()
        if p.get("otaUpdateStatus"):
            rows = [r for r in rows if r["status"] == p["otaUpdateStatus"]]
        start = 0
        if p.get("nextToken"):
            try:
                start = int(p["nextToken"])
            except ValueError:
                raise invalid("The nextToken is not valid.") from None
        end = start + (p.get("maxResults") or 250)
        out: dict[str, Any] = {
            "otaUpdates": [
                {
                    "otaUpdateId": r["ota_id"],
                    "otaUpdateArn": ota_arn(r["ota_id"]),
                    "creationDate": r["created_at"],
                }
                for r in rows[start:end]
            ]
        }
        if end < len(rows):
            out["nextToken"] = str(end)
        return out

    def delete(self, p: dict[str, Any]) -> dict[str, Any]:
        row = self._row(p["otaUpdateId"])
        if p.get("forceDeleteAWSJob"):
            try:
                self.model.delete_job(row["job_id"], True)
            except ApiError as exc:
                if exc.status != 404:
                    raise
        if p.get("deleteStream") and row["stream_id"] and row["stream_created"]:
            try:
                self.streams.delete({"streamId": row["stream_id"]})
            except ApiError as exc:
                if exc.status != 404:
                    raise
        with self.model.lock, self.model.store.tx() as db:
            db.execute("DELETE FROM ota_updates WHERE ota_id = ?", (p["otaUpdateId"],))
        return {}
