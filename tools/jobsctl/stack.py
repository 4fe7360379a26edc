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

import os
import secrets
import string
from pathlib import Path
from typing import IO, Any

from .broker import SERVICE_IDENTITY, STREAMS_IDENTITY, Broker, start_broker
from .errors import JobsctlError
from .objectstore import DEFAULT_BUCKET, ObjectStore
from .pki import CertificateAuthority
from .service import Service
from .service.common import ACCOUNT_ID, REGION
from .service.fleet import Registry
from .service.model import Model
from .service.quotas import Quotas
from .service.service import ServiceConfig
from .service.store import Store
from .statedir import StateDir, local_client
from .things import register

# Held (flock) by a running stack in its state dir: one stack per folder.
LOCK_FILE = StateDir.LOCK


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
        self.dir = StateDir(self.state_dir)
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
        return self.dir.endpoints_file

    def _lock(self) -> None:
        """One running stack per state dir: two would share one SQLite store and broker dir."""
        self._lock_file = self.dir.lock()

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def start(self) -> dict[str, Any]:
        self._lock()
        self.dir.clear_endpoints()
        self.ca = CertificateAuthority(self.dir.ca_dir)
        store = Store(self.dir.db_file)
        try:
            self.access_key, self.secret_key = credentials(store)
        finally:
            store.close()
        svc = self.dir.service_dir
        self.service_creds = self.ca.issue(SERVICE_IDENTITY, svc, stem=SERVICE_IDENTITY)
        self.streams_creds = self.ca.issue(STREAMS_IDENTITY, svc, stem=STREAMS_IDENTITY)
        self.server_creds = self.ca.issue_server(svc)
        try:
            self.broker = start_broker(self.dir.broker_dir, self.ca, self.mqtt_port)
            self.mqtt_port = self.broker.port
            self.objects = ObjectStore(
                self.dir.s3_dir,
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
        self.dir.write_endpoints(self.endpoints)
        return self.endpoints

    def _start_service(self) -> None:
        assert self.ca is not None and self.objects is not None
        objects = self.objects
        config = ServiceConfig(
            db_path=self.dir.db_file,
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
        self.dir.clear_endpoints()
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
        self.broker = start_broker(self.dir.broker_dir, self.ca, self.mqtt_port)

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
        """Register a thing (things.register) in the running service's registry."""
        assert self.ca is not None
        info = register(self.dir, self.ca, Registry(self.model), name, group)
        info.update(mqtt_host="localhost", mqtt_port=self.mqtt_port)
        return info

    def iot_client(self) -> Any:
        if self._iot is None:
            self._iot = local_client("iot", self.endpoints)
        return self._iot

    def events_credentials(self) -> Any:
        """Certificate and key of the identity that may read the Jobs events ($aws/events/#)."""
        from .broker import EVENTS_IDENTITY

        assert self.ca is not None
        return self.ca.issue(EVENTS_IDENTITY, self.dir.service_dir, stem=EVENTS_IDENTITY)

    def jobs_data_client(self, **kwargs: Any) -> Any:
        """A boto3 ``iot-jobs-data`` client for the HTTPS device API."""
        return local_client("iot-jobs-data", self.endpoints, **kwargs)

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
    return local_client("iot", endpoints, **kwargs)
