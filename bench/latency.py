"""create-job → IN_PROGRESS, our agent against the AWS IoT Device SDK v2 (a part of ``make
bench``; also alone, not a test):

    python -m bench.latency [--jobs N] [--idle-s S]

On one local stack (mosquitto with mTLS, the Jobs service), our agent (Unix port, the default
board profile) and ``awsiotsdk`` (CPython) each take ``--jobs`` jobs, one of each in turn
(agent, SDK, agent, ...): the same load at the same moment for both. Each figure is the
service's own timestamps, job createdAt → execution startedAt (ms resolution). Printed: p50
and p90 of each, the agent/SDK p50 ratio (the goal is ≤ 1.2) and the machine's load average.

``--idle-s`` (0: skipped) also measures what an idle agent allocates: a fresh board, connected
and with no job, runs for that long with the GC's automatic collection off (a 1 MB heap, no
board profile), and the bytes its heap grew by are printed per minute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobsctl.device import DeviceProcess, setup_board
from jobsctl.errors import JobsctlError
from jobsctl.stack import Stack

from .memory import final

# The application of the idle board: waits until the agent is connected and has said "no
# pending job", then counts what the heap grows by while it is idle (gc's automatic passes off:
# nothing is freed, so the growth is what was allocated).
IDLE_APP = """\
import asyncio
import gc
import time


async def main(agent):
    while agent.link.t is None or agent._job or not agent.link.connects:
        await asyncio.sleep_ms(100)
    await asyncio.sleep_ms(1000)
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    t0 = time.ticks_ms()
    await asyncio.sleep_ms(IDLE_MS)
    a1 = gc.mem_alloc()
    dt = time.ticks_diff(time.ticks_ms(), t0)
    gc.enable()
    print("IDLE-ALLOC", a1 - a0, dt)
"""


def arn(stack: Stack, thing: str) -> str:
    ep = stack.endpoints
    return f"arn:aws:iot:{ep['region']}:{ep['account_id']}:thing/{thing}"


def started_latency(stack: Stack, thing: str, job: str) -> float:
    iot = stack.iot_client()
    created = iot.describe_job(jobId=job)["job"]["createdAt"]
    started = iot.describe_job_execution(jobId=job, thingName=thing)["execution"]["startedAt"]
    return float((started - created).total_seconds() * 1000)


def run(stack: Stack, jobs: int) -> tuple[list[float], list[float]]:
    """create-job -> IN_PROGRESS for our agent and for the awsiotsdk peer, one job each in
    turn (agent, peer, agent, ...), ``jobs`` each, on the same stack: the same load, the same
    moment, for both."""
    ours: list[float] = []
    peer: list[float] = []
    name = "lat-agent"
    stack.create_thing(name)
    board = setup_board(stack.state_dir, name)
    doc = {"operation": "config", "set": {"log_level": "info"}}
    with DeviceProcess(board) as dev, sdk_peer(stack, "lat-sdk"):
        dev.wait_for("no pending job", timeout=30)
        for i in range(jobs):
            for thing, job, out, document in (
                (name, f"lat-agent-{i}", ours, doc),
                ("lat-sdk", f"lat-sdk-{i}", peer, {"operation": "x"}),
            ):
                stack.iot_client().create_job(
                    jobId=job, targets=[arn(stack, thing)], document=json.dumps(document)
                )
                if final(stack, thing, job, 30)["status"] != "SUCCEEDED":
                    raise JobsctlError(f"{job} did not succeed")
                out.append(started_latency(stack, thing, job))
    return ours, peer


def idle_alloc(stack: Stack, seconds: float) -> tuple[int, int]:
    """Bytes an idle agent allocated in ``seconds`` (automatic GC off), and the ms measured."""
    name = "lat-idle"
    stack.create_thing(name)
    board = setup_board(stack.state_dir, name)
    app = board / "app"
    app.mkdir(exist_ok=True)
    (app / "application.py").write_text(IDLE_APP.replace("IDLE_MS", str(int(seconds * 1000))))
    with DeviceProcess(board, profile=None, heapsize="1024k") as dev:
        line = dev.wait_for("IDLE-ALLOC", timeout=seconds + 60)
    _, n, ms = line.split()[-3:]
    return int(n), int(ms)


@contextlib.contextmanager
def sdk_peer(stack: Stack, name: str) -> Iterator[None]:
    """The AWS IoT Device SDK v2 doing what the agent does: start-next on notify-next, then
    SUCCEEDED."""
    from awscrt import mqtt
    from awsiot import iotjobs, mqtt_connection_builder

    info = stack.create_thing(name)
    conn = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost",
        port=int(stack.endpoints["mqtt_port"]),
        cert_filepath=info["cert_file"],
        pri_key_filepath=info["key_file"],
        ca_filepath=stack.endpoints["ca_file"],
        client_id=name,
        clean_session=True,
        keep_alive_secs=30,
    )
    conn.connect().result(10)
    jobs_client = iotjobs.IotJobsClient(conn)
    qos = mqtt.QoS.AT_LEAST_ONCE

    def start_next(*_: Any) -> None:
        jobs_client.publish_start_next_pending_job_execution(
            iotjobs.StartNextPendingJobExecutionRequest(thing_name=name), qos
        )

    def on_started(resp: Any) -> None:
        ex = resp.execution
        if ex is None:
            return
        jobs_client.publish_update_job_execution(
            iotjobs.UpdateJobExecutionRequest(
                thing_name=name,
                job_id=ex.job_id,
                status="SUCCEEDED",
                expected_version=ex.version_number,
            ),
            qos,
        )

    try:
        f, _ = jobs_client.subscribe_to_start_next_pending_job_execution_accepted(
            iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=name),
            qos,
            on_started,
        )
        f.result(10)
        f, _ = jobs_client.subscribe_to_update_job_execution_accepted(
            iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=name, job_id="+"),
            qos,
            lambda resp: None,
        )
        f.result(10)
        f, _ = jobs_client.subscribe_to_next_job_execution_changed_events(
            iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=name), qos, start_next
        )
        f.result(10)
        yield
    finally:
        conn.disconnect().result(10)


def p(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def figure(ours: list[float], peer: list[float]) -> tuple[str, str]:
    """The bench row's figure and note for these samples."""
    return (
        f"p50 {p(ours, 50):.1f} ms, p90 {p(ours, 90):.1f} ms",
        f"AWS IoT Device SDK v2 (awsiotsdk, CPython): p50 {p(peer, 50):.1f} ms, "
        f"p90 {p(peer, 90):.1f} ms; agent/SDK p50 ratio {p(ours, 50) / p(peer, 50):.2f} "
        f"(goal ≤ 1.2); {len(ours)} jobs each, one of each in turn on the same stack; the "
        f"service's timestamps (createdAt, startedAt: ms resolution)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--jobs", type=int, default=50, help="jobs each (default 50)")
    parser.add_argument(
        "--idle-s", type=float, default=0, help="also an idle agent's allocations (seconds)"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs: at least 1")
    load0 = os.getloadavg()[0]
    try:
        with (
            tempfile.TemporaryDirectory(prefix="jobsctl-bench-") as tmp,
            Stack(Path(tmp) / "stack") as stack,
        ):
            ours, peer = run(stack, args.jobs)
            idle = idle_alloc(stack, args.idle_s) if args.idle_s > 0 else None
    except JobsctlError as exc:
        print(f"jobsctl bench: {exc}", file=sys.stderr)
        return 1
    a, b = figure(ours, peer)
    print(f"create-job → IN_PROGRESS, our agent: {a}")
    print(f"  {b}")
    print(f"  min: agent {min(ours):.1f} ms, SDK {min(peer):.1f} ms")
    if idle is not None:
        n, ms = idle
        print(f"idle agent: {n} bytes allocated in {ms} ms, {n * 60000 // max(ms, 1)} bytes/min")
    print(f"load average (1 min): {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
