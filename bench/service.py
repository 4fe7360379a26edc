"""Benchmark of the local Jobs service's data plane (not a test).

    python -m bench.service --devices 1000 [--rate 300] [--drivers 2] [--rounds 3]
                            [--split-cores]

Starts a fresh stack in a temporary folder (this process: the service, as ``jobsctl serve``
runs it; mosquitto beside it), registers N things in one group (each with its own
certificate, so each device is its own MQTT connection over mutual TLS), creates one job for
the group, then hands the devices to ``--drivers`` load-generator processes (paho clients on
one selector each), so that the devices' own MQTT work does not share the service's process
and GIL. Every device does what an agent does for one job: ``start-next``, an ``IN_PROGRESS``
update and a ``SUCCEEDED`` update, each waiting for its reply.

Two arrival patterns: a burst (every device starts at once) and, with ``--rate D``, a steady
arrival of D devices per second (3·D requests per second). Prints the throughput (replies per
second from the first request to the last reply), p50/p90/p99 reply latency, and the
service's CPU time per reply (this process's CPU time over the run, which is the service's
alone: the main thread only waits), the figure that must stay flat as the fleet grows; beside
it the broker's and the load generators' CPU per reply and the load average, since all of
them share the machine's cores. ``--split-cores`` puts the service on a CPU of its own and
the broker and the load generators on the others: the figure without the load generators
taking the service's core.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import selectors
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from jobsctl.checkout import ROOT
from jobsctl.errors import JobsctlError
from jobsctl.stack import Stack

ARN = "arn:aws:iot:us-east-1:123456789012"
JOB = "bench-job"
_CPUS = sorted(os.sched_getaffinity(0))  # before --split-cores narrows this process's


@dataclass
class _Device:
    name: str
    client: mqtt.Client
    start_at: float = 0.0
    step: int = 0
    sent_at: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    subscribed: bool = False
    started: bool = False
    done: bool = False


class Driver:
    """Load generator: one process, its devices on one selector (``--drive`` mode)."""

    def __init__(self, port: int, ca_file: str, job_id: str) -> None:
        self.port = port
        self.ca_file = ca_file
        self.job_id = job_id
        self.sel = selectors.DefaultSelector()
        self.devices: list[_Device] = []
        self.finished = 0
        self.subscribed = 0
        self.first_sent = 0.0
        self.last_reply = 0.0

    def _make(self, name: str, cert: str, key: str) -> _Device:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name)
        context = ssl.create_default_context(cafile=self.ca_file)
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
        sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY: as a device with no-delay
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
        if not dev.subscribed:
            dev.subscribed = True
            self.subscribed += 1

    def _send(self, dev: _Device, suffix: str, body: dict[str, Any]) -> None:
        dev.sent_at = time.monotonic()
        dev.client.publish(f"$aws/things/{dev.name}/jobs/{suffix}", json.dumps(body), qos=0)

    def _on_message(self, client: mqtt.Client, dev: _Device, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        dev.latencies.append(now - dev.sent_at)
        self.last_reply = now
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

    def _pump(self, timeout: float) -> None:
        for key, events in self.sel.select(timeout=timeout):
            dev: _Device = key.data
            if events & selectors.EVENT_READ:
                dev.client.loop_read()
            if events & selectors.EVENT_WRITE:
                dev.client.loop_write()

    def connect(self, creds: list[list[str]], timeout: float) -> None:
        for name, cert, key in creds:
            dev = self._make(name, cert, key)
            dev.client.connect("localhost", self.port, keepalive=300)
            self.devices.append(dev)
        deadline = time.monotonic() + timeout
        while self.subscribed < len(self.devices):
            if time.monotonic() > deadline:
                raise JobsctlError(f"{self.subscribed}/{len(self.devices)} devices subscribed")
            self._pump(0.5)

    def run(self, start: float, rate: float, offset: int, stride: int, timeout: float) -> None:
        # Device i of this driver starts at start + (offset + i * stride) / rate (rate 0: all
        # at start), so that the drivers' devices interleave into one arrival sequence.
        for i, dev in enumerate(self.devices):
            dev.start_at = start + ((offset + i * stride) / rate if rate else 0.0)
        waiting = sorted(self.devices, key=lambda d: d.start_at, reverse=True)
        deadline = start + timeout
        while self.finished < len(self.devices):
            now = time.monotonic()
            if now > deadline:
                raise JobsctlError(f"timed out: {self.finished}/{len(self.devices)} finished")
            while waiting and waiting[-1].start_at <= now:
                dev = waiting.pop()
                if not self.first_sent:
                    self.first_sent = now
                self._send(dev, "start-next", {})
            wait = 0.5 if not waiting else max(0.0, min(0.5, waiting[-1].start_at - now))
            self._pump(wait)

    def close(self) -> None:
        for d in self.devices:
            d.client.disconnect()
            d.client.loop_write()
        self.sel.close()


def drive(spec_file: str) -> int:
    """``--drive``: connect, say ``ready``, wait for ``go START`` on stdin, run, print JSON."""
    spec = json.loads(Path(spec_file).read_text())
    driver = Driver(spec["port"], spec["ca_file"], spec["job_id"])
    try:
        driver.connect(spec["creds"], 120)
        print("ready", flush=True)
        line = sys.stdin.readline().split()
        if not line or line[0] != "go":
            return 1
        cpu0 = _cpu()
        driver.run(float(line[1]), spec["rate"], spec["offset"], spec["stride"], spec["timeout"])
        cpu = _cpu() - cpu0
    except JobsctlError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    finally:
        driver.close()
    # The load generators share the machine's cores with the service and the broker: their
    # CPU time is reported beside the service's, so that a reader sees what competes.
    print(
        json.dumps(
            {
                "latencies": [x for d in driver.devices for x in d.latencies],
                "rejected": sum(d.errors for d in driver.devices),
                "first_sent": driver.first_sent,
                "last_reply": driver.last_reply,
                "cpu": cpu,
            }
        ),
        flush=True,
    )
    return 0


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (the value below which p % of the samples lie)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, -(-len(ordered) * p // 100) - 1))
    return ordered[int(index)]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid: int) -> float:
    """CPU seconds of another process (the broker), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _round(
    stack: Stack,
    creds: list[tuple[str, str, str]],
    job_id: str,
    rate: float,
    drivers: int,
    timeout: float,
    tmp: Path,
    split: bool = False,
) -> dict[str, Any]:
    """One job over the fleet, its devices driven by ``drivers`` processes; ``split``: the
    service alone on the first CPU, the broker and the load generators on the others."""
    stack.iot_client().create_job(
        jobId=job_id,
        targets=[f"{ARN}:thinggroup/bench-fleet"],
        document=json.dumps({"operation": "bench"}),
    )
    procs = []
    for k in range(drivers):
        spec = tmp / f"driver-{job_id}-{k}.json"
        spec.write_text(
            json.dumps(
                {
                    "port": stack.mqtt_port,
                    "ca_file": str(stack.endpoints["ca_file"]),
                    "job_id": job_id,
                    "creds": creds[k::drivers],
                    "rate": rate,
                    "offset": k,
                    "stride": drivers,
                    "timeout": timeout,
                }
            )
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.service", "--drive", str(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
        )
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise JobsctlError("a load generator did not connect its devices")
        broker = stack.broker.proc.pid if stack.broker and stack.broker.proc else 0
        if split:
            _split_cores([broker, *(p.pid for p in procs)])
        load = os.getloadavg()[0]  # the machine is shared: what else ran, over the last minute
        cpu0, broker0 = _cpu(), _proc_cpu(broker)
        start = time.monotonic() + 0.2
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"go {start}\n")
            p.stdin.flush()
        results = []
        for p in procs:
            assert p.stdout is not None
            results.append(json.loads(p.stdout.readline() or '{"error": "no result"}'))
        cpu, broker_cpu = _cpu() - cpu0, _proc_cpu(broker) - broker0
    finally:
        for p in procs:
            with contextlib.suppress(OSError):
                if p.stdin:
                    p.stdin.close()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    for r in results:
        if "error" in r:
            raise JobsctlError(f"benchmark: {r['error']}")
    latencies = [x for r in results for x in r["latencies"]]
    drivers_cpu = sum(r.get("cpu", 0.0) for r in results)
    wall = max(r["last_reply"] for r in results) - min(r["first_sent"] for r in results)
    job = stack.iot_client().describe_job(jobId=job_id)["job"]
    return {
        "devices": len(creds),
        "mode": f"steady {rate:g} devices/s" if rate else "burst",
        "replies": len(latencies),
        "rejected": sum(r["rejected"] for r in results),
        "wall_s": round(wall, 3),
        "throughput_replies_per_s": round(len(latencies) / wall, 1),
        "latency_p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "latency_p90_ms": round(percentile(latencies, 90) * 1000, 2),
        "latency_p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "latency_max_ms": round(max(latencies) * 1000, 2),
        "service_cpu_us_per_reply": round(cpu / len(latencies) * 1e6, 1),
        "broker_cpu_us_per_reply": round(broker_cpu / len(latencies) * 1e6, 1),
        "drivers_cpu_us_per_reply": round(drivers_cpu / len(latencies) * 1e6, 1),
        "load_average": round(load, 2),
        "job_status": job["status"],
        "succeeded": job["jobProcessDetails"]["numberOfSucceededThings"],
    }


def _split_cores(others: list[int]) -> None:
    """This process (the service) on one CPU alone, ``others`` on the rest: what the service
    does when the load generators do not take its core (other users of the machine still
    may: the load average says)."""
    if len(_CPUS) < 2:
        raise JobsctlError("--split-cores needs two CPUs at least")
    _pin(os.getpid(), _CPUS[:1])
    for p in others:
        if p:
            _pin(p, _CPUS[1:])


def _pin(pid: int, cpus: list[int]) -> None:
    for task in os.listdir(f"/proc/{pid}/task"):  # every thread: affinity is per thread
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task), cpus)


def run(
    devices: int,
    timeout: float,
    rate: float = 0.0,
    drivers: int = 2,
    rounds: int = 1,
    split: bool = False,
) -> list[dict[str, Any]]:
    """``rounds`` jobs over one fleet of ``devices`` (a burst, or ``rate`` devices/s): one
    result per round. The fleet is provisioned once; each round is a new job."""
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp, Stack(Path(tmp)) as stack:
        t0 = time.monotonic()
        creds = []
        for i in range(devices):
            info = stack.create_thing(f"bench-{i:05d}", group="bench-fleet")
            creds.append((info["thing_name"], str(info["cert_file"]), str(info["key_file"])))
        provisioning = time.monotonic() - t0
        out = []
        try:
            for n in range(rounds):
                r = _round(
                    stack,
                    creds,
                    f"{JOB}-{n}",
                    rate,
                    min(drivers, devices),
                    timeout,
                    Path(tmp),
                    split,
                )
                r["cores"] = "split: the service on a CPU of its own" if split else "shared"
                r["provisioning_s"] = round(provisioning, 2)
                out.append(r)
        finally:
            if split:  # this process (make bench runs on in it) and its children: every CPU
                _pin(os.getpid(), _CPUS)
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.service", description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.0, help="devices/s (default: a burst)")
    parser.add_argument("--drivers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--rounds", type=int, default=1, help="jobs run one after the other")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for a round")
    parser.add_argument(
        "--split-cores",
        action="store_true",
        help="the service alone on one CPU, the broker and the load generators on the others",
    )
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        return drive(args.drive)
    try:
        results = run(
            args.devices, args.timeout, args.rate, args.drivers, args.rounds, args.split_cores
        )
    except JobsctlError as exc:
        print(f"jobsctl: {exc}", file=sys.stderr)
        return 1
    for r in results:
        print(json.dumps(r, indent=2))
        print(
            f"{r['devices']} devices, {r['mode']}: {r['replies']} replies in {r['wall_s']} s:"
            f" {r['throughput_replies_per_s']} replies/s, p50 {r['latency_p50_ms']} ms,"
            f" p99 {r['latency_p99_ms']} ms, CPU per reply: service"
            f" {r['service_cpu_us_per_reply']} µs, broker {r['broker_cpu_us_per_reply']} µs,"
            f" load generators {r['drivers_cpu_us_per_reply']} µs; load average"
            f" {r['load_average']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
