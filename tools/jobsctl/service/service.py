"""One running Jobs service: model + control plane + data plane + the timer thread."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .controlplane import ControlPlane
from .dataplane import DataPlane, Presigner, to_json
from .jobsdata import JobsDataApi
from .model import Model
from .otaupdates import OtaUpdates
from .quotas import Quotas, RateLimiter
from .store import Store
from .streams import StreamPlane, Streams

log = logging.getLogger("jobsctl.service")


@dataclass
class ServiceConfig:
    db_path: Path
    access_key: str
    secret_key: str
    region: str
    mqtt_port: int
    ca_file: Path
    service_cert: Path
    service_key: Path
    server_cert: Path
    server_key: Path
    streams_cert: Path  # the stream plane's identity (broker.STREAMS_IDENTITY)
    streams_key: Path
    control_port: int = 0
    plaintext: bool = False
    throttle_per_second: float | None = None
    jobs_data_port: int = 0
    quotas: Quotas = field(default_factory=Quotas)


class Service:
    def __init__(
        self,
        config: ServiceConfig,
        *,
        presign: Presigner | None = None,
        fetch_object: object = None,
    ) -> None:
        self.config = config
        self.store = Store(config.db_path)
        self.model = Model(self.store, fetch_object=fetch_object)  # type: ignore[arg-type]
        self.streams = Streams(self.model, fetch_object)  # type: ignore[arg-type]
        self.ota_updates = OtaUpdates(self.model, self.streams)
        self.control = ControlPlane(
            self.model,
            access_key=config.access_key,
            secret_key=config.secret_key,
            region=config.region,
            extra={**self.streams.handlers(), **self.ota_updates.handlers()},
        )
        self.data = DataPlane(
            self.model,
            host="localhost",
            port=config.mqtt_port,
            ca_file=config.ca_file,
            cert_file=config.service_cert,
            key_file=config.service_key,
            presign=presign,
            throttle_per_second=config.throttle_per_second,
        )
        self.stream_plane = StreamPlane(
            self.streams,
            port=config.mqtt_port,
            ca_file=config.ca_file,
            cert_file=config.streams_cert,
            key_file=config.streams_key,
        )
        self.model.on_change = self._changed
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._run_timers, name="jobs-timers", daemon=True)
        # the HTTPS device API, Jobs events, quotas
        self.jobs_data = JobsDataApi(
            self.model,
            self.data,
            access_key=config.access_key,
            secret_key=config.secret_key,
            region=config.region,
        )
        self.model.on_event = self._events
        self.model.max_active_jobs = config.quotas.active_jobs
        if config.quotas.api_rate_per_second:
            self.control.rate = RateLimiter(config.quotas.api_rate_per_second)

    def _changed(self, things: set[str]) -> None:
        # A device's request wakes no timer: what it can make due (a step or in-progress
        # timeout) is a minute away at least, and the timer looks every second anyway.
        if not self.data.on_change(things):
            self._wake.set()

    def _events(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Jobs events on $aws/events/... (QoS 1, from the service's own identity)."""
        for topic, body in events:
            self.data.client.publish(topic, to_json(body), qos=1)

    def start(self) -> int:
        """Start both planes; returns the control-plane port."""
        self.data.start()
        self.stream_plane.start()
        port = self.control.start(
            self.config.control_port,
            self.config.server_cert,
            self.config.server_key,
            plaintext=self.config.plaintext,
        )
        jobs_port = self.jobs_data.start(
            self.config.jobs_data_port,
            self.config.server_cert,
            self.config.server_key,
            plaintext=self.config.plaintext,
        )
        self._timer.start()
        self.model.endpoints.update(mqtt=self.config.mqtt_port, control=port, jobs_data=jobs_port)
        return port

    def tick(self) -> None:
        self.model.tick()

    def _run_timers(self) -> None:
        while not self._stop.is_set():
            try:
                nxt = self.model.tick()
            except Exception:
                log.exception("timer tick failed")
                nxt = None
            wait = 1.0 if nxt is None else min(1.0, max(0.01, nxt - time.time()))
            self._wake.wait(wait)
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._timer.is_alive():
            self._timer.join(timeout=10)
        self.jobs_data.stop()
        self.control.stop()
        self.stream_plane.stop()
        self.data.stop()
        with self.model.lock:
            self.store.close()
