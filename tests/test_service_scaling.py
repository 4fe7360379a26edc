"""The service's per-request and per-tick work is by index, never a scan of the fleet's
executions: what keeps the cost per reply flat from 100 to 3,000 devices (bench.service);
and the data plane's batching keeps a thing's requests in order, each checked against the
version the one before it left."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from plugin_stack import JobsDevice, unique

from jobsctl.checkout import ROOT
from jobsctl.service import fleet
from jobsctl.service.model import Model
from jobsctl.service.store import Store
from jobsctl.stack import Stack

ARN = "arn:aws:iot:us-east-1:123456789012"
# Tables that grow with the fleet (or its rollouts): a statement on them must search an index.
GROWING = ("executions", "pending_targets", "execution_history")


@pytest.fixture()
def model(tmp_path: Path) -> Model:
    model = Model(Store(tmp_path / "jobs.sqlite3"))
    fleet.create_group(model, "fleet")
    for i in range(50):
        fleet.create_thing(model, f"t{i:03d}")
        fleet.add_thing_to_group(model, "fleet", f"t{i:03d}")
    model.create_job(
        "job-1",
        {"targets": [f"{ARN}:thinggroup/fleet"], "document": json.dumps({"operation": "x"})},
    )
    return model


def _scans(model: Model, run: object) -> list[tuple[str, str]]:
    """(statement, plan line) for every full scan of a growing table while ``run()`` runs."""
    seen: list[str] = []
    model.db.set_trace_callback(seen.append)
    try:
        run()  # type: ignore[operator]
    finally:
        model.db.set_trace_callback(None)
    statements = [s for s in seen if s.split()[0].upper() in ("SELECT", "UPDATE", "DELETE")]
    assert statements, "nothing was traced: the check would pass vacuously"
    plan = sqlite3.connect(model.store.path)
    try:
        return [
            (sql, row[3])
            for sql in statements
            for row in plan.execute("EXPLAIN QUERY PLAN " + sql)
            if any(row[3] == f"SCAN {t}" or row[3].startswith(f"SCAN {t} ") for t in GROWING)
        ]
    finally:
        plan.close()


def test_start_next_and_updates_search_indexes_only(model: Model) -> None:
    def device() -> None:
        ex = model.start_next("t007", {"step": "1"}, 5)
        assert ex is not None and ex.status == "IN_PROGRESS"
        model.update("t007", "job-1", "IN_PROGRESS", {"step": "2"}, ex.version, None, None)
        model.update("t007", "job-1", "SUCCEEDED", None, None, None, None)
        assert model.pending("t007") == []

    assert _scans(model, device) == []


def test_the_timer_tick_searches_indexes_only(model: Model) -> None:
    # executions with and without deadlines, so that the deadline indexes hold something
    for i in range(0, 50, 2):
        model.start_next(f"t{i:03d}", None, 5 if i % 4 else None)

    def tick() -> None:
        nxt = model.tick()
        assert nxt is not None  # the step deadlines set above: the timer knows the next one

    assert _scans(model, tick) == []


def test_the_timer_still_times_out_what_is_due(model: Model) -> None:
    ex = model.start_next("t001", None, 1)  # a step timeout of one minute
    assert ex is not None and ex.step_deadline is not None
    model.skew = 120.0
    model.tick()
    timed_out = model.execution("t001", "job-1")
    assert timed_out is not None and timed_out.status == "TIMED_OUT"


def test_a_things_pipelined_requests_are_answered_in_order_each_against_the_last_version(
    stack_session: Stack, jobs_device: Callable[..., JobsDevice]
) -> None:
    dev = jobs_device(stack_session)
    job = unique("job")
    stack_session.iot_client().create_job(
        jobId=job, targets=[f"{ARN}:thing/{dev.name}"], document=json.dumps({"operation": "x"})
    )
    outcome, reply = dev.request("start-next")
    assert outcome == "accepted" and reply["execution"]["versionNumber"] == 2
    since = dev.mark()
    # Sent back to back, no reply awaited: they reach the service together (one batch or
    # several), and each passes only if the one before it was applied first.
    tokens = [f"v{v}" for v in range(2, 9)] + ["stale"]
    for v, token in zip([*range(2, 9), 2], tokens, strict=True):
        body = {"status": "IN_PROGRESS", "expectedVersion": v, "clientToken": token}
        dev.client.publish(dev.prefix + f"{job}/update", json.dumps(body), qos=1)
    for token in tokens:
        dev.wait_for(
            f"{job}/update/" + ("rejected" if token == "stale" else "accepted"),
            lambda body, token=token: body.get("clientToken") == token,  # type: ignore[misc]
            since,
        )
    replies = [
        (topic.rsplit("/", 1)[1], body)
        for topic, body in dev.messages[since:]
        if topic.startswith(dev.prefix + f"{job}/update/")
    ]
    assert [body["clientToken"] for _, body in replies] == tokens  # in the order sent
    assert [outcome for outcome, _ in replies] == ["accepted"] * 7 + ["rejected"]
    stale = replies[-1][1]
    assert stale["code"] == "VersionMismatch"
    assert stale["executionState"]["versionNumber"] == 9  # after the seven in order


def test_bench_service_runs_as_its_docstring_gives_it() -> None:
    split = ["--split-cores"] if len(os.sched_getaffinity(0)) >= 2 else []
    out = subprocess.run(
        [sys.executable, "-m", "bench.service", "--devices", "6", "--rounds", "2", *split],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    decoder = json.JSONDecoder()
    text = out.stdout
    results = []
    at = text.find("{")
    while at >= 0:
        result, end = decoder.raw_decode(text, at)
        results.append(result)
        at = text.find("{", end)
    assert len(results) == 2  # one per round
    for r in results:
        assert r["replies"] == 18 and r["rejected"] == 0  # start-next + 2 updates, 6 devices
        assert r["job_status"] == "COMPLETED" and r["succeeded"] == 6
        assert r["service_cpu_us_per_reply"] > 0 and r["drivers_cpu_us_per_reply"] > 0
        assert r["latency_p99_ms"] >= r["latency_p50_ms"] > 0
        assert r["cores"] == ("split: the service on a CPU of its own" if split else "shared")
    assert out.stdout.count("replies/s") == 2


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--split-cores needs two CPUs")
def test_split_cores_gives_the_calling_process_every_cpu_back() -> None:
    # make bench runs bench.service's split round in its own process, then the rest of the
    # benches: the service's CPU of its own must not stay that process's (and its children's).
    from bench import service as bench_service

    before = os.sched_getaffinity(0)
    rs = bench_service.run(6, 120, split=True)
    assert rs[0]["cores"].startswith("split"), rs
    threads = os.listdir("/proc/self/task")
    assert all(os.sched_getaffinity(int(t)) == before for t in threads), threads
