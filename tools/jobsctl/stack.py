"""The whole local stack in one object: mosquitto, the Jobs service, the object store.

    stack = Stack(Path(".local"))
    endpoints = stack.start()         # also written to .local/endpoints.json
    stack.create_thing("dev-1", group="fleet")
    stack.iot_client().create_job(...)
    stack.stop()

Everything runs in-process in threads except mosquitto and moto (subprocesses). All state
(CA, credentials, things, jobs, executions, payloads) lives in the state dir, so a new Stack
on the same folder continues where the last one stopped.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import string
from pathlib import Path
from typing import IO, Any

import boto3

from .broker import RESERVED_NAMES, SERVICE_IDENTITY, STREAMS_IDENTITY, Broker, start_broker
from .errors import JobsctlError
from .objectstore import DEFAULT_BUCKET, ObjectStore
from .pki import CertificateAuthority, certificate_id
from .service import Service
from .service.model import ACCOUNT_ID, REGION, Model, thing_arn
from .service.quotas import Quotas
from .service.service import ServiceConfig
from .service.store import Store

# Held (flock) by a running stack in its state dir: one stack per folder.
LOCK_FILE = ".stack.lock"
_NAME_CHARS = set(string.ascii_letters + string.digits + ":_-")


def check_name(name: str, what: str = "thing") -> None:
    if not 1 <= len(name) <= 128 or not set(name) <= _NAME_CHARS:
        raise JobsctlError(f"invalid {what} name {name!r}: use 1-128 characters of [a-zA-Z0-9:_-]")
    if what == "thing" and name.lower() in RESERVED_NAMES:
        raise JobsctlError(f"invalid thing name {name!r}: it is reserved for the Jobs service")


def credentials(store: Store) -> tuple[str, str]:
    """The state dir's access key pair, created at first use."""
    key = store.get_meta("aws_access_key_id")
    secret = store.get_meta("aws_secret_access_key")
    if key is None or secret is None:
        key = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + "234567") for _ in range(16))
        secret = secrets.token_urlsafe(30)[:40]
        store.set_meta("aws_access_key_id", key)
        store.set_meta("aws_secret_access_key", secret)
    return key, secret


def issue_thing(
    state_dir: Path, ca: CertificateAuthority, model: Model, name: str
) -> dict[str, Any]:
    """Issue (or reuse) the thing's certificate into DIR/things/NAME and record it."""
    check_name(name)  # never a certificate for a reserved or malformed name
    folder = Path(state_dir) / "things" / name
    cert, key = folder / "device.pem", folder / "device.key"
    if not (cert.exists() and key.exists()):
        creds = ca.issue(name, folder)
        cert, key = creds.cert, creds.key
    ca_copy = folder / "ca.pem"
    shutil.copyfile(ca.cert_path, ca_copy)
    pem = cert.read_text()
    cert_id = certificate_id(pem.encode())
    model.add_certificate(cert_id, name, pem)
    return {
        "thing_name": name,
        "thing_arn": thing_arn(name),
        "cert_file": str(cert),
        "key_file": str(key),
        "ca_file": str(ca_copy),
        "certificate_id": cert_id,
    }


class Stack:
    def __init__(
        self,
        state_dir: Path,
        *,
        mqtt_port: int = 0,
        control_port: int = 0,
        s3_port: int = 0,
        throttle_per_second: float | None = None,
        plaintext_control: bool = False,
        quotas: Quotas | None = None,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.mqtt_port, self.control_port, self.s3_port = mqtt_port, control_port, s3_port
        self.jobs_data_port = 0
        self.throttle_per_second = throttle_per_second
        self.plaintext_control = plaintext_control
        self.quotas = quotas or Quotas()
        self.endpoints: dict[str, Any] = {}
        self.broker: Broker | None = None
        self.objects: ObjectStore | None = None
        self.service: Service | None = None
        self.ca: CertificateAuthority | None = None
        self._iot: Any = None
        self._lock_file: IO[str] | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def endpoints_file(self) -> Path:
        return self.state_dir / "endpoints.json"

    def _lock(self) -> None:
        """One running stack per state dir: two would share one SQLite store and broker dir."""
        self._lock_file = open(self.state_dir / LOCK_FILE, "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            self._lock_file = None
            raise JobsctlError(f"another stack is already running on {self.state_dir}") from None

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def start(self) -> dict[str, Any]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        self.endpoints_file.unlink(missing_ok=True)
        self.ca = CertificateAuthority(self.state_dir / "ca")
        store = Store(self.state_dir / "jobs.sqlite3")
        try:
            self.access_key, self.secret_key = credentials(store)
        finally:
            store.close()
        svc = self.state_dir / "service"
        self.service_creds = self.ca.issue(SERVICE_IDENTITY, svc, stem=SERVICE_IDENTITY)
        self.streams_creds = self.ca.issue(STREAMS_IDENTITY, svc, stem=STREAMS_IDENTITY)
        self.server_creds = self.ca.issue_server(svc)
        try:
            self.broker = start_broker(self.state_dir / "broker", self.ca, self.mqtt_port)
            self.mqtt_port = self.broker.port
            self.objects = ObjectStore(
                self.state_dir / "s3",
                self.ca,
                region=REGION,
                access_key=self.access_key,
                secret_key=self.secret_key,
                port=self.s3_port,
            )
            self.objects.start()
            self.s3_port = self.objects.port
            self._start_service()
        except BaseException:
            self.stop()
            raise
        scheme = "http" if self.plaintext_control else "https"
        self.endpoints = {
            "mqtt_host": "localhost",
            "mqtt_port": self.mqtt_port,
            "ca_file": str(self.ca.cert_path),
            "control_plane_url": f"{scheme}://localhost:{self.control_port}",
            "jobs_data_url": f"{scheme}://localhost:{self.jobs_data_port}",
            "s3_url": self.objects.url,
            "region": REGION,
            "account_id": ACCOUNT_ID,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "bucket": DEFAULT_BUCKET,
            "service_pid": os.getpid(),
            "state_dir": str(self.state_dir),
        }
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.endpoints, indent=2) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.endpoints_file)
        return self.endpoints

    def _start_service(self) -> None:
        assert self.ca is not None and self.objects is not None
        objects = self.objects
        config = ServiceConfig(
            db_path=self.state_dir / "jobs.sqlite3",
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=REGION,
            mqtt_port=self.mqtt_port,
            ca_file=self.ca.cert_path,
            service_cert=self.service_creds.cert,
            service_key=self.service_creds.key,
            streams_cert=self.streams_creds.cert,
            streams_key=self.streams_creds.key,
            server_cert=self.server_creds.cert,
            server_key=self.server_creds.key,
            control_port=self.control_port,
            plaintext=self.plaintext_control,
            throttle_per_second=self.throttle_per_second,
            jobs_data_port=self.jobs_data_port,
            quotas=self.quotas,
        )
        self.service = Service(config, presign=objects.presign, fetch_object=objects.get)
        try:
            self.control_port = self.service.start()
            self.jobs_data_port = self.service.jobs_data.port
        except BaseException:
            self.service.stop()
            self.service = None
            raise

    def stop(self) -> None:
        if self._lock_file is None:
            return  # not started (or already stopped): nothing of ours to stop
        self.endpoints_file.unlink(missing_ok=True)
        if self.service is not None:
            self.service.stop()
            self.service = None
        if self.objects is not None:
            self.objects.stop()
            self.objects = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        self._iot = None
        self._unlock()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart_broker(self) -> None:
        """Stop and start mosquitto on the same port; the data plane reconnects by itself."""
        assert self.broker is not None and self.ca is not None
        self.broker.stop()
        self.broker = start_broker(self.state_dir / "broker", self.ca, self.mqtt_port)

    def restart_service(self) -> None:
        """Stop both planes and start them again from SQLite (same ports)."""
        if self.service is not None:
            self.service.stop()
            self.service = None
        self._start_service()
        self._iot = None

    # ---------------------------------------------------------------- helpers for tests & tools

    @property
    def model(self) -> Model:
        if self.service is None:
            raise JobsctlError("the stack is not running")
        return self.service.model

    def create_thing(self, name: str, group: str | None = None) -> dict[str, Any]:
        check_name(name)
        if group is not None:
            check_name(group, "thing group")
        model, ca = self.model, self.ca
        assert ca is not None
        model.create_thing(name)
        if group:
            model.create_group(group)
            model.add_thing_to_group(group, name)
        info = issue_thing(self.state_dir, ca, model, name)
        info.update(mqtt_host="localhost", mqtt_port=self.mqtt_port)
        return info

    def iot_client(self) -> Any:
        if self._iot is None:
            self._iot = iot_client(self.endpoints)
        return self._iot

    def events_credentials(self) -> Any:
        """Certificate and key of the identity that may read the Jobs events ($aws/events/#)."""
        from .broker import EVENTS_IDENTITY

        assert self.ca is not None
        return self.ca.issue(EVENTS_IDENTITY, self.state_dir / "service", stem=EVENTS_IDENTITY)

    def jobs_data_client(self, **kwargs: Any) -> Any:
        """A boto3 ``iot-jobs-data`` client for the HTTPS device API."""
        e = self.endpoints
        return boto3.client(
            "iot-jobs-data",
            endpoint_url=e["jobs_data_url"],
            region_name=e["region"],
            aws_access_key_id=e["aws_access_key_id"],
            aws_secret_access_key=e["aws_secret_access_key"],
            verify=e["ca_file"],
            **kwargs,
        )

    def s3_client(self) -> Any:
        assert self.objects is not None
        return self.objects.client()

    def upload(self, key: str, data: bytes | Path) -> str:
        assert self.objects is not None
        body = Path(data).read_bytes() if isinstance(data, Path) else data
        self.objects.put(key, body)
        return f"https://s3.amazonaws.com/{self.objects.bucket}/{key}"

    def inject_fault(self, thing: str, operation: str, code: str, times: int = 1) -> None:
        if operation not in ("start-next", "update", "get", "describe"):
            raise JobsctlError(f"unknown data-plane operation {operation!r}")
        assert self.service is not None
        self.service.data.inject_fault(thing, operation, code, times)

    def advance_clock(self, seconds: float) -> None:
        """Move the service's clock forward (step timeouts, rollout minutes) and run timers."""
        self.model.skew += seconds
        self.model.tick()


def iot_client(endpoints: dict[str, Any], **kwargs: Any) -> Any:
    """A boto3 ``iot`` client for a local stack's control plane."""
    return boto3.client(
        "iot",
        endpoint_url=endpoints["control_plane_url"],
        region_name=endpoints["region"],
        aws_access_key_id=endpoints["aws_access_key_id"],
        aws_secret_access_key=endpoints["aws_secret_access_key"],
        verify=endpoints["ca_file"],
        **kwargs,
    )
