"""Benchmark of the local Jobs service's data plane (not a test).

    python -m jobsctl.bench_service --devices 1000

Starts a fresh stack in a temporary folder, registers N things in one group (each with its
own certificate, so each device is its own MQTT connection over mutual TLS), creates one job
for the group, then every device does what an agent does for one job: ``start-next``, an
``IN_PROGRESS`` update and a ``SUCCEEDED`` update, each waiting for its reply. All devices
run concurrently in one thread (paho clients on one selector). Prints the throughput
(replies per second over the whole run) and the p50/p99 reply latency.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from .errors import JobsctlError
from .stack import Stack

ARN = "arn:aws:iot:us-east-1:123456789012"


@dataclass
class _Device:
    name: str
    client: mqtt.Client
    step: int = 0
    sent_at: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    done: bool = False


class Bench:
    def __init__(self, stack: Stack, devices: int, job_id: str) -> None:
        self.stack = stack
        self.job_id = job_id
        self.sel = selectors.DefaultSelector()
        self.devices: list[_Device] = []
        self.writers: set[int] = set()
        self.count = devices
        self.finished = 0
        self.requests = 0

    def _make(self, index: int, name: str, cert: str, key: str) -> _Device:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
        context = ssl.create_default_context(cafile=str(self.stack.endpoints["ca_file"]))
        context.load_cert_chain(cert, key)
        client.tls_set_context(context)
        dev = _Device(name, client)
        client.user_data_set(dev)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = lambda c, u, s: self._watch(s, dev)
        client.on_socket_close = lambda c, u, s: self._forget(s)
        client.on_socket_register_write = lambda c, u, s: self._want_write(s, True)
        client.on_socket_unregister_write = lambda c, u, s: self._want_write(s, False)
        return dev

    def _watch(self, sock: Any, dev: _Device) -> None:
        self.sel.register(sock, selectors.EVENT_READ, dev)

    def _forget(self, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)

    def _want_write(self, sock: Any, on: bool) -> None:
        try:
            key = self.sel.get_key(sock)
        except (KeyError, ValueError):
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        self.sel.modify(sock, events, key.data)

    def _on_connect(self, client: mqtt.Client, dev: _Device, *args: Any) -> None:
        prefix = f"$aws/things/{dev.name}/jobs/"
        client.subscribe([(prefix + "start-next/+", 1), (prefix + "+/update/+", 1)])

    def _on_subscribe(self, client: mqtt.Client, dev: _Device, *args: Any) -> None:
        self._send(dev, "start-next", {})

    def _send(self, dev: _Device, suffix: str, body: dict[str, Any]) -> None:
        dev.sent_at = time.perf_counter()
        self.requests += 1
        dev.client.publish(f"$aws/things/{dev.name}/jobs/{suffix}", json.dumps(body), qos=0)

    def _on_message(self, client: mqtt.Client, dev: _Device, msg: mqtt.MQTTMessage) -> None:
        dev.latencies.append(time.perf_counter() - dev.sent_at)
        if msg.topic.endswith("/rejected"):
            dev.errors += 1
        dev.step += 1
        if dev.step == 1:
            self._send(
                dev,
                f"{self.job_id}/update",
                {"status": "IN_PROGRESS", "statusDetails": {"step": "1"}},
            )
        elif dev.step == 2:
            self._send(dev, f"{self.job_id}/update", {"status": "SUCCEEDED"})
        elif not dev.done:
            dev.done = True
            self.finished += 1

    def connect_all(self, creds: list[tuple[str, str, str]]) -> None:
        for i, (name, cert, key) in enumerate(creds):
            dev = self._make(i, name, cert, key)
            dev.client.connect("localhost", self.stack.mqtt_port, keepalive=120)
            self.devices.append(dev)

    def run(self, timeout: float) -> float:
        start = time.perf_counter()
        deadline = start + timeout
        last_misc = start
        while self.finished < self.count:
            now = time.perf_counter()
            if now > deadline:
                raise JobsctlError(
                    f"benchmark timed out: {self.finished}/{self.count} devices finished"
                )
            for key, events in self.sel.select(timeout=0.5):
                dev: _Device = key.data
                if events & selectors.EVENT_READ:
                    dev.client.loop_read()
                if events & selectors.EVENT_WRITE:
                    dev.client.loop_write()
            if now - last_misc > 1.0:
                for d in self.devices:
                    d.client.loop_misc()
                last_misc = now
        return time.perf_counter() - start

    def close(self) -> None:
        for d in self.devices:
            d.client.disconnect()
            d.client.loop_write()
        self.sel.close()


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def run(devices: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp, Stack(Path(tmp)) as stack:
        t0 = time.perf_counter()
        creds = []
        for i in range(devices):
            info = stack.create_thing(f"bench-{i:05d}", group="bench-fleet")
            creds.append((info["thing_name"], info["cert_file"], info["key_file"]))
        provisioning = time.perf_counter() - t0
        stack.iot_client().create_job(
            jobId="bench-job",
            targets=[f"{ARN}:thinggroup/bench-fleet"],
            document=json.dumps({"operation": "bench"}),
        )
        bench = Bench(stack, devices, "bench-job")
        t1 = time.perf_counter()
        bench.connect_all(creds)
        connecting = time.perf_counter() - t1
        try:
            wall = bench.run(timeout)
        finally:
            bench.close()
        latencies = [x for d in bench.devices for x in d.latencies]
        errors = sum(d.errors for d in bench.devices)
        job = stack.iot_client().describe_job(jobId="bench-job")["job"]
        return {
            "devices": devices,
            "mqtt_connections": devices,
            "requests": bench.requests,
            "replies": len(latencies),
            "rejected": errors,
            "wall_s": round(wall, 3),
            "throughput_replies_per_s": round(len(latencies) / wall, 1),
            "latency_p50_ms": round(_percentile(latencies, 50) * 1000, 2),
            "latency_p99_ms": round(_percentile(latencies, 99) * 1000, 2),
            "latency_max_ms": round(max(latencies) * 1000, 2),
            "provisioning_s": round(provisioning, 2),
            "connect_s": round(connecting, 2),
            "job_status": job["status"],
            "succeeded": job["jobProcessDetails"]["numberOfSucceededThings"],
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobsctl.bench_service", description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the run")
    args = parser.parse_args(argv)
    try:
        result = run(args.devices, args.timeout)
    except JobsctlError as exc:
        print(f"jobsctl: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    print(
        f"{result['devices']} devices, {result['replies']} replies in {result['wall_s']} s: "
        f"{result['throughput_replies_per_s']} replies/s, p50 {result['latency_p50_ms']} ms, "
        f"p99 {result['latency_p99_ms']} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
