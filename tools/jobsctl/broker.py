"""A mosquitto broker that behaves like AWS IoT Core's for the Jobs topics.

Mutual TLS only: every client presents a certificate from the local CA, its CN becomes the
MQTT username (``use_identity_as_username``) and also its client id, whatever id it asked for
(``use_username_as_clientid``): as AWS IoT's policy binds ``client/${iot:Connection.Thing.
ThingName}``, a thing can neither take another thing's session nor the service's. The ACL lets
a thing use only ``$aws/things/<its name>/...``. The Jobs service connects as the privileged
user ``SERVICE_IDENTITY``, a name no thing can have (a '.' is not allowed in thing names), and
``RESERVED_NAMES`` are refused as thing names. A plaintext listener exists only when asked for
explicitly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .errors import JobsctlError
from .netutil import LogPump, dies_with_parent, free_port, reap_stale, terminate, write_pid
from .pki import CertificateAuthority, Credentials

SERVICE_IDENTITY = "jobs.service"
# Thing names refused because they look like the service (its identity before issue 21).
RESERVED_NAMES = frozenset({"jobs-service", "jobs_service"})
# AWS IoT caps an MQTT message at 128 KB of payload; the broker allows for topic and header.
MAX_PACKET_SIZE = 132096

_ACL = """\
# Written by jobsctl. The Jobs service may use every thing's topics; a thing only its own.
user {service}
topic readwrite $aws/#

# The service's MQTT file-delivery plane (streams): its own session beside the Jobs one.
user {streams}
topic readwrite $aws/things/+/streams/#

# Operators' watchers of the Jobs events (AWS: an IoT policy allowing iot:Subscribe on them),
# of the things' telemetry, and their commands to the applications.
user {events}
topic read $aws/events/#
topic read dt/#
topic write cmd/#

# %u is the client certificate's CN, i.e. the thing name. Beside the agent, the application
# publishes its telemetry under dt/<thing>/ and takes commands under cmd/<thing>/
# (iotjobs.agent.TELEMETRY, COMMANDS).
pattern readwrite $aws/things/%u/#
pattern write dt/%u/#
pattern read cmd/%u/#
"""
# Reads $aws/events/# and nothing else; not a thing name (a '.' is not allowed in those).
EVENTS_IDENTITY = "jobs.events"
# The stream plane's identity (the broker makes the CN the client id: the Jobs plane's session
# and this one need a CN each); only the stream topics.
STREAMS_IDENTITY = "jobs.streams"


def mosquitto_binary() -> str:
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    if not path:
        raise JobsctlError("mosquitto is not installed (run `make setup`)")
    return path


@dataclass
class Broker:
    """A running mosquitto; ``stop()`` ends it."""

    host: str
    port: int
    ca_file: Path
    folder: Path
    proc: subprocess.Popen[bytes] | None = None
    log: LogPump | None = None
    plaintext_port: int | None = None
    _server: Credentials | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self.proc:
            terminate(self.proc)
        self.proc = None

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_config(
    folder: Path, ca: CertificateAuthority, port: int, plaintext_port: int | None = None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    server = ca.issue_server(folder)
    acl = folder / "acl"
    acl.write_text(
        _ACL.format(service=SERVICE_IDENTITY, events=EVENTS_IDENTITY, streams=STREAMS_IDENTITY)
    )
    lines = [
        "# Written by jobsctl; regenerated on every start.",
        "per_listener_settings false",
        "allow_anonymous false",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",  # carries the "running" line that start_broker waits for
        "connection_messages false",
        # Started as root, mosquitto drops to the `mosquitto` user, which could not read
        # the keys in a private folder; stay the user that started it instead.
        "user root" if os.geteuid() == 0 else "",
        f"acl_file {acl}",
        f"max_packet_size {MAX_PACKET_SIZE}",
        # Every packet out at once: a Jobs reply is one small packet, and Nagle would hold
        # it until the client's delayed ACK (~40 ms) whenever one is still unacknowledged.
        "set_tcp_nodelay true",
        f"listener {port} 127.0.0.1",
        f"cafile {ca.cert_path}",
        f"certfile {server.cert}",
        f"keyfile {server.key}",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "set_tcp_nodelay true",
        "tls_version tlsv1.2",
    ]
    if plaintext_port:
        lines += [f"listener {plaintext_port} 127.0.0.1", "allow_anonymous true"]
    conf = folder / "mosquitto.conf"
    conf.write_text("\n".join(line for line in lines if line) + "\n")
    return conf


def start_broker(
    folder: Path,
    ca: CertificateAuthority,
    port: int = 0,
    plaintext_port: int | None = None,
    attempts: int = 5,
) -> Broker:
    """Start mosquitto on ``port`` (a free one when 0) and return once it listens."""
    binary = mosquitto_binary()
    last = ""
    pid_file = Path(folder) / "mosquitto.pid"
    # A broker left running on this folder by a stack that was killed holds its port.
    reap_stale(pid_file, str(Path(folder) / "mosquitto.conf"))
    for _ in range(attempts):
        use_port = port or free_port()
        conf = write_config(Path(folder), ca, use_port, plaintext_port)
        proc = subprocess.Popen(
            [binary, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=dies_with_parent(),  # SIGKILLed if we die, even by kill -9
        )
        write_pid(pid_file, proc.pid)
        log = LogPump(proc)
        if log.wait_for(" running", timeout=15) and proc.poll() is None:
            return Broker(
                "127.0.0.1", use_port, ca.cert_path, Path(folder), proc, log, plaintext_port
            )
        last = log.tail()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if port:
            break
    raise JobsctlError(f"mosquitto did not start: {last.strip().splitlines()[-1:] or last}")
