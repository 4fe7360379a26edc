"""A thing in a local stack: its record in the Jobs service and its certificate, one path.

:func:`register` writes the thing (and its group) into a :class:`Registry` and its certificate
into ``DIR/things/NAME/``. The registry is always the Jobs service's own API, never the
database around it:

- in the stack's process (:meth:`jobsctl.stack.Stack.create_thing`), the service's registry;
- for ``jobsctl thing create`` while ``jobsctl serve`` runs, its control plane
  (:class:`ControlPlaneRegistry`: CreateThing, CreateThingGroup, AddThingToThingGroup,
  RegisterCertificateWithoutCA, AttachThingPrincipal), so the running service sees the new
  member at once (CONTINUOUS jobs reach it);
- when none runs, the model on the state dir's store, under the state dir's lock (the one a
  running stack holds), so that no ``serve`` can start while it writes.
"""

from __future__ import annotations

import shutil
import string
from pathlib import Path
from typing import Any, Protocol

from .errors import JobsctlError
from .pki import CertificateAuthority, certificate_id
from .service.common import thing_arn
from .service.fleet import Registry as ModelRegistry
from .service.fleet import certificate_arn
from .statedir import StateDir, local_client

_NAME_CHARS = set(string.ascii_letters + string.digits + ":_-")


def check_name(name: str, what: str = "thing") -> None:
    from .broker import RESERVED_NAMES

    if not 1 <= len(name) <= 128 or not set(name) <= _NAME_CHARS:
        raise JobsctlError(f"invalid {what} name {name!r}: use 1-128 characters of [a-zA-Z0-9:_-]")
    if what == "thing" and name.lower() in RESERVED_NAMES:
        raise JobsctlError(f"invalid thing name {name!r}: it is reserved for the Jobs service")


class Registry(Protocol):
    """What registering a thing needs of the Jobs service: its registry
    (:class:`jobsctl.service.fleet.Registry` in-process, :class:`ControlPlaneRegistry` over
    HTTPS)."""

    def create_thing(self, name: str) -> Any: ...

    def create_group(self, name: str) -> Any: ...

    def add_thing_to_group(self, group: str, thing: str) -> Any: ...

    def add_certificate(self, cert_id: str, thing: str, pem: str) -> Any: ...


class ControlPlaneRegistry:
    """A :class:`Registry` over a running stack's control plane (a boto3 ``iot`` client)."""

    def __init__(self, iot: Any) -> None:
        self.iot = iot

    def create_thing(self, name: str) -> Any:
        return self.iot.create_thing(thingName=name)

    def create_group(self, name: str) -> Any:
        return self.iot.create_thing_group(thingGroupName=name)

    def add_thing_to_group(self, group: str, thing: str) -> Any:
        return self.iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing)

    def add_certificate(self, cert_id: str, thing: str, pem: str) -> Any:
        iot = self.iot
        try:
            arn = iot.register_certificate_without_ca(certificatePem=pem, status="ACTIVE")[
                "certificateArn"
            ]
        except iot.exceptions.ResourceAlreadyExistsException:  # a thing created again
            arn = certificate_arn(cert_id)
        return iot.attach_thing_principal(thingName=thing, principal=arn)


def register(
    state: StateDir,
    ca: CertificateAuthority,
    registry: Registry,
    name: str,
    group: str | None = None,
) -> dict[str, Any]:
    """Register ``name`` (in ``group``, made when missing) and issue (or reuse) its certificate
    into DIR/things/NAME; what a device needs to connect."""
    check_name(name)  # never a certificate for a reserved or malformed name
    if group is not None:
        check_name(group, "thing group")
    registry.create_thing(name)
    if group:
        registry.create_group(group)
        registry.add_thing_to_group(group, name)
    folder = state.thing_dir(name)
    cert, key = folder / "device.pem", folder / "device.key"
    if not (cert.exists() and key.exists()):
        creds = ca.issue(name, folder)
        cert, key = creds.cert, creds.key
    ca_copy = folder / "ca.pem"
    shutil.copyfile(ca.cert_path, ca_copy)
    pem = cert.read_text()
    cert_id = certificate_id(pem.encode())
    registry.add_certificate(cert_id, name, pem)
    return {
        "thing_name": name,
        "thing_arn": thing_arn(name),
        "cert_file": str(cert),
        "key_file": str(key),
        "ca_file": str(ca_copy),
        "certificate_id": cert_id,
    }


def create_thing(state_dir: StateDir | Path, name: str, group: str | None = None) -> dict[str, Any]:
    """``jobsctl thing create``: through the running stack's control plane when ``serve``
    runs on the state dir, else through the model under the state dir's lock."""
    state = StateDir.of(state_dir)
    check_name(name)
    if group is not None:
        check_name(group, "thing group")
    ca = CertificateAuthority(state.ca_dir)
    endpoints = state.running()
    if endpoints is not None:
        info = register(
            state, ca, ControlPlaneRegistry(local_client("iot", endpoints)), name, group
        )
        info.update(mqtt_host=endpoints["mqtt_host"], mqtt_port=endpoints["mqtt_port"])
        return info
    from .service.model import Model
    from .service.store import Store

    busy = (
        f"a stack is starting on {state} (its lock is held but it serves nothing yet): "
        "run this again once `jobsctl serve` says it is serving"
    )
    with state.lock(busy):
        store = Store(state.db_file)
        try:
            return register(state, ca, ModelRegistry(Model(store)), name, group)
        finally:
            store.close()
