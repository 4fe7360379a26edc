"""The S3-compatible object store for job payloads: moto's server over HTTPS.

moto's server (``moto_server -H 127.0.0.1 -p PORT -c CERT -k KEY``) runs as a subprocess with
a certificate from the state dir's CA whose DNS SAN is ``localhost`` (bookworm's mbedTLS on
the device matches DNS names only), so devices reach it as ``https://localhost:PORT``.
Addressing is path-style. It serves objects and Range GETs (206).

Note: moto accepts any signature and ignores expiry, so a pre-signed URL from this store keeps
working after it expires and with a tampered signature; real S3 refuses both (403).

moto keeps objects in memory only: :class:`ObjectStore` mirrors the bucket into
``<folder>/objects`` on stop and uploads the mirror again on start, so payloads survive a
restart of ``serve``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .errors import JobsctlError
from .netutil import (
    LogPump,
    dies_with_parent,
    free_port,
    reap_stale,
    terminate,
    wait_for_port,
    write_pid,
)
from .pki import CertificateAuthority
from .statedir import local_client

DEFAULT_BUCKET = "jobs-payloads"


def moto_binary() -> str:
    path = Path(sys.executable).parent / "moto_server"
    if not path.exists():
        raise JobsctlError("moto_server is not installed in this environment (run `make venv`)")
    return str(path)


class ObjectStore:
    def __init__(
        self,
        folder: Path,
        ca: CertificateAuthority,
        *,
        region: str,
        access_key: str,
        secret_key: str,
        port: int = 0,
        bucket: str = DEFAULT_BUCKET,
    ) -> None:
        self.folder = Path(folder)
        self.ca = ca
        self.region = region
        self.access_key, self.secret_key = access_key, secret_key
        self.port = port
        self.bucket = bucket
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: LogPump | None = None
        self._client: Any = None

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def mirror(self) -> Path:
        return self.folder / "objects"

    def start(self, attempts: int = 5) -> str:
        pid_file = self.folder / "moto.pid"
        # A store left running on this folder by a stack that was killed holds its port.
        reap_stale(pid_file, str(self.folder / "server.pem"))
        creds = self.ca.issue_server(self.folder)
        last = ""
        for _ in range(attempts):
            port = self.port or free_port()
            env = dict(os.environ, MOTO_ALLOW_NONEXISTENT_REGION="true")
            proc = subprocess.Popen(
                [
                    moto_binary(),
                    "-H",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-c",
                    str(creds.cert),
                    "-k",
                    str(creds.key),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                preexec_fn=dies_with_parent(),  # SIGKILLed if we die, even by kill -9
            )
            write_pid(pid_file, proc.pid)
            log = LogPump(proc)
            if wait_for_port("127.0.0.1", port, 30, lambda p=proc: p.poll() is None):  # type: ignore[misc]
                self.proc, self._log, self.port = proc, log, port
                break
            last = log.tail()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if self.port:
                break
        else:
            raise JobsctlError(f"the object store did not start: {last.strip()[-300:]}")
        if self.proc is None:
            raise JobsctlError(f"the object store did not start: {last.strip()[-300:]}")
        self._client = None
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=self.bucket)
        self._restore()
        return self.url

    def client(self) -> Any:
        if self._client is None:
            self._client = local_client(
                "s3",
                {
                    "s3_url": self.url,
                    "region": self.region,
                    "aws_access_key_id": self.access_key,
                    "aws_secret_access_key": self.secret_key,
                    "ca_file": self.ca.cert_path,
                },
            )
        return self._client

    def put(self, key: str, data: bytes, bucket: str | None = None) -> None:
        bucket = bucket or self.bucket
        self.client().put_object(Bucket=bucket, Key=key, Body=data)
        self._mirror_write(bucket, key, data)

    def get(self, bucket: str, key: str) -> bytes:
        """An object's bytes; KeyError when it does not exist."""
        client = self.client()
        try:
            return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        except (client.exceptions.NoSuchKey, client.exceptions.NoSuchBucket):
            raise KeyError(f"{bucket}/{key}") from None

    def presign(self, bucket: str, key: str, expires: int) -> str:
        return str(
            self.client().generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
            )
        )

    def _mirror_write(self, bucket: str, key: str, data: bytes) -> None:
        path = self.mirror / bucket / key
        if not path.resolve().is_relative_to(self.mirror.resolve()):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def snapshot(self) -> None:
        """Copy every object of every bucket into the mirror (moto forgets on exit)."""
        client = self.client()
        for b in client.list_buckets().get("Buckets", []):
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=b["Name"]):
                for obj in page.get("Contents", []):
                    self._mirror_write(b["Name"], obj["Key"], self.get(b["Name"], obj["Key"]))

    def _restore(self) -> None:
        if not self.mirror.is_dir():
            return
        client = self.client()
        for bucket_dir in sorted(p for p in self.mirror.iterdir() if p.is_dir()):
            if bucket_dir.name != self.bucket:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=bucket_dir.name)
            for path in sorted(bucket_dir.rglob("*")):
                if path.is_file() and not path.name.endswith(".part"):
                    key = path.relative_to(bucket_dir).as_posix()
                    client.put_object(Bucket=bucket_dir.name, Key=key, Body=path.read_bytes())

    def stop(self) -> None:
        if self.proc is None:
            return
        # If the snapshot fails, the mirror still holds everything that went through put().
        with contextlib.suppress(Exception):
            self.snapshot()
        terminate(self.proc)
        self.proc = None
