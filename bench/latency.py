"""create-job → IN_PROGRESS, our agent against the AWS IoT Device SDK v2 (a part of ``make
bench``; also alone, not a test):

    python -m bench.latency [--jobs N] [--repeat R] [--idle-s S]

On one local stack (mosquitto with mTLS, the Jobs service), our agent (Unix port, the default
board profile) and ``awsiotsdk`` (CPython) each take ``--jobs`` jobs per round, one of each in
turn (agent, SDK, agent, ...; the SDK first in every second round): the same load at the same
moment for both; ``--repeat`` rounds (default 3) on the same stack, device and SDK connection.
Each figure is the service's own timestamps, job createdAt → execution startedAt (ms
resolution). Printed: each round's p50 and p90 of each and their agent/SDK ratios, the min,
median and max of the rounds' ratios (the goal: p50 ratio ≤ 1.2 in every round), the medians
of the rounds' percentiles, and the machine's load average.

``--idle-s`` (0: skipped) also measures what an idle agent allocates: a fresh board, connected
and with no job, runs for that long with the GC's automatic collection off (a 1 MB heap, no
board profile), and the bytes its heap grew by are printed per minute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
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


Round = tuple[list[float], list[float]]  # (our agent's samples, the SDK's), ms


def run(stack: Stack, jobs: int, rounds: int = 1) -> list[Round]:
    """create-job -> IN_PROGRESS for our agent and for the awsiotsdk peer, one job each in
    turn (agent, peer, agent, ...; the peer first in every second round), ``jobs`` each per
    round, ``rounds`` rounds on the same stack: the same load, the same moment, for both."""
    out: list[Round] = []
    name = "lat-agent"
    stack.create_thing(name)
    board = setup_board(stack.state_dir, name)
    doc = {"operation": "config", "set": {"log_level": "info"}}
    with DeviceProcess(board) as dev, sdk_peer(stack, "lat-sdk"):
        dev.wait_for("no pending job", timeout=30)
        for r in range(rounds):
            ours: list[float] = []
            peer: list[float] = []
            for i in range(jobs):
                pair = [
                    (name, f"lat-agent-{r}-{i}", ours, doc),
                    ("lat-sdk", f"lat-sdk-{r}-{i}", peer, {"operation": "x"}),
                ]
                for thing, job, samples, document in pair[:: -1 if r % 2 else 1]:
                    stack.iot_client().create_job(
                        jobId=job, targets=[arn(stack, thing)], document=json.dumps(document)
                    )
                    if final(stack, thing, job, 30)["status"] != "SUCCEEDED":
                        raise JobsctlError(f"{job} did not succeed")
                    samples.append(started_latency(stack, thing, job))
            out.append((ours, peer))
    return out


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


def figure(rounds: list[Round]) -> tuple[str, str]:
    """The bench row's figure and note for these rounds: the medians of the rounds'
    percentiles, each round's ratios and their min, median and max."""

    def med(side: int, pct: float) -> float:
        return statistics.median(p(r[side], pct) for r in rounds)

    def spread(values: list[float]) -> str:
        listed = ", ".join(f"{x:.2f}" for x in values)
        return (
            f"{listed}: min {min(values):.2f}, median {statistics.median(values):.2f}, "
            f"max {max(values):.2f}"
        )

    r50 = [p(ours, 50) / p(peer, 50) for ours, peer in rounds]
    r90 = [p(ours, 90) / p(peer, 90) for ours, peer in rounds]
    met = "met" if max(r50) <= 1.2 else "not met"
    n = len(rounds)
    return (
        f"p50 {med(0, 50):.1f} ms, p90 {med(0, 90):.1f} ms (median of {n} rounds)",
        f"AWS IoT Device SDK v2 (awsiotsdk, CPython): p50 {med(1, 50):.1f} ms, p90 "
        f"{med(1, 90):.1f} ms (median of {n} rounds); agent/SDK p50 ratio per round "
        f"{spread(r50)} (goal ≤ 1.2 in every round: {met}); p90 ratio per round "
        f"{spread(r90)}; {len(rounds[0][0])} jobs each per round, one of each in turn on the "
        "same stack; the service's timestamps (createdAt, startedAt: ms resolution)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--jobs", type=int, default=50, help="jobs each per round (default 50)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--idle-s", type=float, default=0, help="also an idle agent's allocations (seconds)"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs: at least 1")
    if args.repeat < 1:
        parser.error("--repeat: at least 1")
    load0 = os.getloadavg()[0]
    try:
        with (
            tempfile.TemporaryDirectory(prefix="jobsctl-bench-") as tmp,
            Stack(Path(tmp) / "stack") as stack,
        ):
            rounds = run(stack, args.jobs, args.repeat)
            idle = idle_alloc(stack, args.idle_s) if args.idle_s > 0 else None
    except JobsctlError as exc:
        print(f"jobsctl bench: {exc}", file=sys.stderr)
        return 1
    for i, (ours, peer) in enumerate(rounds):
        print(
            f"round {i + 1}: agent p50 {p(ours, 50):.1f} ms, p90 {p(ours, 90):.1f} ms; SDK p50 "
            f"{p(peer, 50):.1f} ms, p90 {p(peer, 90):.1f} ms; agent/SDK p50 ratio "
            f"{p(ours, 50) / p(peer, 50):.2f}, p90 ratio {p(ours, 90) / p(peer, 90):.2f}"
        )
    a, b = figure(rounds)
    print(f"create-job → IN_PROGRESS, our agent: {a}")
    print(f"  {b}")
    agent = min(x for r in rounds for x in r[0])
    sdk = min(x for r in rounds for x in r[1])
    print(f"  min: agent {agent:.1f} ms, SDK {sdk:.1f} ms")
    if idle is not None:
        n, ms = idle
        print(f"idle agent: {n} bytes allocated in {ms} ms, {n * 60000 // max(ms, 1)} bytes/min")
    print(f"load average (1 min): {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
