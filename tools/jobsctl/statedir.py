"""A local stack's state directory (``--state-dir DIR``): the one owner of the folder's layout.

    DIR/endpoints.json      what a running stack answers on (written by ``jobsctl serve``,
                            removed when it stops; mode 0600: it holds the access key pair)
    DIR/jobs.sqlite3        things, groups, certificates, jobs, executions (service.store)
    DIR/.stack.lock         flock held by the running stack, or by whoever writes without it
    DIR/ca/                 the stack's certificate authority (pki)
    DIR/things/NAME/        a thing's certificate, key and the CA (``jobsctl thing create``)
    DIR/devices/NAME/       a simulated board's filesystem (``jobsctl device run``)
    DIR/broker/ DIR/s3/ DIR/service/   mosquitto's, the object store's and the service's own
    DIR/signing/            the demo's OTA signing key

Everything that reads or writes in a state dir goes through :class:`StateDir`: the stack, the
commands, the simulated boards and the demo. :func:`local_client` builds the boto3 clients on a
local stack's endpoints (``iot``, ``iot-jobs-data``, ``s3``) for all of them.

``--state-dir`` means the same everywhere: the local stack's folder. ``serve`` runs the stack
there; ``thing``, ``device`` and ``job`` talk to it (``job`` talks to real AWS without the
flag); ``demo`` runs a stack of its own there and empties the folder first (only a folder a
demo made, never one a running stack holds).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from .errors import JobsctlError

# The local endpoint of each service a client is built for (keys of endpoints.json).
_URLS = {"iot": "control_plane_url", "iot-jobs-data": "jobs_data_url", "s3": "s3_url"}


def local_client(service: str, endpoints: Mapping[str, Any], **kwargs: Any) -> Any:
    """A boto3 client (``iot``, ``iot-jobs-data`` or ``s3``) for a local stack: its endpoint,
    region, access key pair, and its CA as the only one trusted."""
    import boto3
    from botocore.config import Config

    if service == "s3":  # the object store serves buckets by path, signs with SigV4
        kwargs.setdefault(
            "config", Config(s3={"addressing_style": "path"}, signature_version="s3v4")
        )
    return boto3.client(
        service,
        endpoint_url=endpoints[_URLS[service]],
        region_name=endpoints["region"],
        aws_access_key_id=endpoints["aws_access_key_id"],
        aws_secret_access_key=endpoints["aws_secret_access_key"],
        verify=str(endpoints["ca_file"]),
        **kwargs,
    )


class StateDir:
    """The folder of one local stack; paths in it, its endpoints, its lock and its clients."""

    ENDPOINTS = "endpoints.json"
    DB = "jobs.sqlite3"
    LOCK = ".stack.lock"
    # Every top-level entry a stack, its things and boards may write (the demo's own aside).
    ENTRIES = frozenset(
        {ENDPOINTS, DB, f"{DB}-wal", f"{DB}-shm", LOCK, "ca", "things", "devices"}
        | {"broker", "s3", "service", "signing"}
    )

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls, path: StateDir | Path | str) -> StateDir:
        """``path`` as a StateDir (one already is)."""
        return path if isinstance(path, StateDir) else cls(path)

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:  # Path(state), open(state / ...): the folder itself
        return str(self.path)

    def __repr__(self) -> str:
        return f"StateDir({str(self.path)!r})"

    # ---------------------------------------------------------------- the layout

    @property
    def endpoints_file(self) -> Path:
        return self.path / self.ENDPOINTS

    @property
    def db_file(self) -> Path:
        return self.path / self.DB

    @property
    def lock_file(self) -> Path:
        return self.path / self.LOCK

    @property
    def ca_dir(self) -> Path:
        return self.path / "ca"

    @property
    def broker_dir(self) -> Path:
        return self.path / "broker"

    @property
    def s3_dir(self) -> Path:
        return self.path / "s3"

    @property
    def service_dir(self) -> Path:
        return self.path / "service"

    @property
    def signing_dir(self) -> Path:
        return self.path / "signing"

    def thing_dir(self, name: str) -> Path:
        return self.path / "things" / name

    def board_dir(self, name: str) -> Path:
        return self.path / "devices" / name

    # ---------------------------------------------------------------- endpoints.json

    def write_endpoints(self, endpoints: Mapping[str, Any]) -> None:
        """Publish a started stack's endpoints (atomically; 0600: the secret key is in it)."""
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(endpoints), indent=2) + "\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.endpoints_file)

    def clear_endpoints(self) -> None:
        self.endpoints_file.unlink(missing_ok=True)

    def endpoints(self) -> dict[str, Any]:
        """The endpoints of the stack running here; one clear error when none was started."""
        path = self.endpoints_file
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise JobsctlError(
                f"{path} does not exist: start `jobsctl serve --state-dir {self.path}` first"
            ) from None
        except ValueError as exc:
            raise JobsctlError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise JobsctlError(f"{path} is not a JSON object")
        return data

    def running(self) -> dict[str, Any] | None:
        """The endpoints of a stack running here (its process alive), or None."""
        try:
            endpoints = self.endpoints()
            os.kill(int(endpoints["service_pid"]), 0)
        except (JobsctlError, KeyError, ValueError, ProcessLookupError, PermissionError):
            return None
        return endpoints

    def client(self, service: str, **kwargs: Any) -> Any:
        """A boto3 client for the stack running here (:func:`local_client`)."""
        return local_client(service, self.endpoints(), **kwargs)

    # ---------------------------------------------------------------- the lock

    def lock(self, busy: str | None = None) -> IO[str]:
        """Take the folder's lock (flock, released when the returned file is closed): one
        writer at a time, a running stack or a command working without one. ``busy`` is the
        error when another holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        f = open(self.lock_file, "a+")  # noqa: SIM115
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise JobsctlError(busy or f"another stack is already running on {self.path}") from None
        return f
