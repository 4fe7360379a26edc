"""``make bench``: the benchmarks, one table, written to ``bench/results.md`` (not a test).

    python -m bench [--quick]

Every figure is measured in the same run, next to what it is compared with, because machines
are noisy and ratios travel better than absolute numbers. A and B run interleaved, round by
round, and are reported as min and median; whole process against whole process (the device
pipeline's process against curl's) or in-process against in-process (the loop against its
own primitives); heap is read while the loop runs; a smallest heap is the size from which 5
consecutive sizes pass, with the lowest passing size beside it; the machine's load is noted;
each row names the command that made it and the figure it replaced:

- OTA throughput: the device pipeline (iotjobs.http -> hashlib.sha256 -> simulated
  esp32.Partition, driven by the OTA handler's own loop ``iotjobs.fetch.blocks`` from
  ``bench/ota_pipeline.py`` under the Unix port) on an 8 MiB image from a
  loopback HTTPS server, vs ``curl -s URL | tee slot.bin | sha256sum`` on the same URL (and
  ``curl -o /dev/null`` alone);
- heap: live heap during that loop for a 1 MiB and an 8 MiB image (the loop runs under
  ``heap_lock``, so this is its high-water), the smallest ``-X heapsize`` for the pipeline, and
  the smallest for the agent and for a whole OTA job (MQTT + TLS + HTTPS + verify + reboot) on
  the local stack; each with the device code as .mpy files (``make deploy`` on a stock
  firmware: bytecode in the heap) and frozen into the port (``build/micropython-frozen``, as a
  custom firmware built from firmware/manifest.py carries it);
- latency: job created -> execution IN_PROGRESS (the service's own timestamps), our agent vs
  the AWS IoT Device SDK v2 for Python (``awsiotsdk``) doing the same flow on the same stack,
  interleaved, 3 rounds (each round's ratios, their min, median and max), and the heap an
  idle agent allocates per minute (``bench.latency``, also alone);
- service: 100 / 1,000 / 3,000 simulated devices doing start-next + two updates, as a burst
  and at a steady arrival rate (bench.service);
- OTA over MQTT streams (JSON and CBOR) vs HTTPS on the same 1 MiB image: time, bytes on the
  wire, TLS sessions open at once, smallest heap for the whole job (``bench_streams``);
- footprint: ``.mpy`` size of every device module (mpy-cross 1.25);
- ECDSA P-256 verify time on the Unix port;
- delta OTA (``bench.delta``): patch share, apply time against the link, heap;
- memory per job type and board profile (bench.memory): GC-heap and IDF-heap
  high-water marks and headroom on the simulated board's memory model, also with the example
  sensor application running beside the agent (``+sensor``); and the same on esp32-plain for
  the custom firmware (the library frozen in: ``bench.memory --frozen``);
- the agent as a guest in the application (bench.guest): a full signed OTA job beside
  the example sensor: lateness of its 100 ms tick, readings lost, the longest stretch the loop
  is held without a yield, and the agent's pieces of work between two yields timed alone.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jobsctl import image, otajob
from jobsctl.boardmodel import DEFAULT, PROFILES
from jobsctl.checkout import ROOT, unix_port
from jobsctl.device import DeviceProcess, device_env, setup_board
from jobsctl.errors import JobsctlError
from jobsctl.pki import CertificateAuthority
from jobsctl.stack import Stack

from . import delta as bench_delta
from . import guest as bench_guest
from . import latency as bench_latency
from . import memory as bench_memory
from . import service as bench_service
from .table import Row, command, previous_figures, table

PIPELINE = ROOT / "bench" / "ota_pipeline.py"
MQTT_PIPELINE = ROOT / "bench" / "ota_mqtt_pipeline.py"
RESULTS = ROOT / "bench" / "results.md"
MiB = 1 << 20

# ---------------------------------------------------------------- helpers


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def https_files(ca: CertificateAuthority, folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTPS on loopback (certificate for localhost from ``ca``)."""
    creds = ca.issue_server(folder.parent / "server")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(creds.cert, creds.key)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    srv.daemon_threads = True
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"https://localhost:{srv.server_port}"
    finally:
        srv.shutdown()
        srv.server_close()


def upy(
    args: list[str],
    cwd: Path,
    heapsize: str | None = None,
    timeout: float = 300,
    frozen: bool = False,
) -> str:
    cmd = [str(unix_port(frozen))] + (["-X", f"heapsize={heapsize}"] if heapsize else []) + args
    # A fixed heap of -X heapsize, without the board model (the smallest-heap searches).
    r = subprocess.run(
        cmd, cwd=cwd, env=device_env(None), capture_output=True, text=True, timeout=timeout
    )
    return (r.stdout + r.stderr).strip()


def fresh_board(folder: Path, slot: int) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    image.init_sim_flash(folder, partition_size=slot)
    return folder


def smallest(ok: Callable[[int], bool], lo: int, hi: int, step: int) -> int | None:
    """The smallest multiple of ``step`` in [lo, hi] for which ``ok`` holds (monotone)."""
    if not ok(hi):
        return None
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def smallest_stable(
    ok: Callable[[int], bool], lo: int, hi: int, step: int, n: int = 5
) -> tuple[int | None, int | None]:
    """(stable, lowest): ``stable`` is the smallest size from which ``n`` consecutive sizes
    (``step`` apart) all pass, ``lowest`` the smallest size seen to pass. The pass/fail edge
    is not monotone (a run can pass at 68 KB, fail at 70-72 and pass at 74), so a bisection
    alone lands anywhere on it: the bisection only finds where to start, then sizes are tried
    one by one upwards, from a few steps below it, until ``n`` pass in a row."""
    tried: dict[int, bool] = {}

    def once(k: int) -> bool:  # each size is tried once (a job per size on the stack)
        if k not in tried:
            tried[k] = ok(k)
        return tried[k]

    top = smallest(once, lo, hi, step)
    if top is None:
        return None, None
    passed = {k for k, good in tried.items() if good}
    k = max(lo, top - 3 * step)
    run = 0
    first = None
    while k <= hi:
        if once(k):
            passed.add(k)
            run += 1
            first = k if run == 1 else first
            if run >= n:
                return first, min(passed)
        else:
            run = 0
        k += step
    return None, min(passed)


def kb(n: float) -> str:
    return f"{n / 1024:.1f} KB"


def _kb_or(k: int | None) -> str:
    return f"{k} KB" if k else "> 512 KB"


def _stable(found: tuple[int | None, int | None]) -> str:
    stable, lowest = found
    return f"{_kb_or(stable)} (lowest pass {_kb_or(lowest)})"


def _spread(values: list[float], unit: str = "", fmt: str = ".2f") -> str:
    return f"min {min(values):{fmt}}{unit}, median {statistics.median(values):{fmt}}{unit}"


# ---------------------------------------------------------------- OTA pipeline


PRIMITIVES = ROOT / "bench" / "ota_primitives.py"


def bench_pipeline(tmp: Path, runs: int, rows: list[Row]) -> None:
    """The OTA loop against curl (whole process against whole process) and against its own
    primitives (in-process against in-process), interleaved round by round; the live heap
    sampled while the loop runs; the smallest heap it runs in."""
    ca = CertificateAuthority(tmp / "ca")
    files = tmp / "www"
    files.mkdir()
    images = {size: image.build_app_image("9.9.9", size=size) for size in (1 * MiB, 8 * MiB)}
    for size, data in images.items():
        (files / f"{size // MiB}m.bin").write_bytes(data)
    slot = 9 * MiB
    with https_files(ca, files) as base:

        def pipeline(
            size: int, heapsize: str | None = None, frozen: bool = False, *flags: str
        ) -> list[str]:
            board = fresh_board(tmp / "board", slot)
            url = f"{base}/{size // MiB}m.bin"
            args = [str(PIPELINE), url, str(ca.cert_path), "3600000", *flags]
            out = upy(args, board, heapsize, frozen=frozen).split()
            if out[:1] == ["OK"] and out[3] != hashlib.sha256(images[size]).hexdigest():
                raise JobsctlError("the pipeline's SHA-256 does not match the image")
            return out

        def pipeline_ok(k: int, frozen: bool) -> bool:
            return pipeline(1 * MiB, f"{k}k", frozen)[:1] == ["OK"]

        heaps = {}
        for frozen in (False, True):
            for size in (1 * MiB, 8 * MiB):
                out = pipeline(size, None, frozen, "sample")
                if out[:1] != ["OK"]:
                    raise JobsctlError(f"pipeline failed: {' '.join(out)}")
                heaps[size, frozen] = (int(out[4]), int(out[5]), int(out[6]), int(out[12]))
        url = f"{base}/8m.bin"
        curl = f"curl -s --cacert {ca.cert_path} {url}"
        tee = f"{curl} | tee {tmp / 'slot.bin'} | sha256sum >/dev/null"
        t: dict[str, list[float]] = {
            k: [] for k in ("device", "loop", "tee", "null", "read", "sha", "write", "ratio")
        }
        for _ in range(runs):  # A, B, C, D in turn, every round
            t0 = time.perf_counter()
            out = pipeline(8 * MiB)
            t["device"].append(time.perf_counter() - t0)
            if out[:1] != ["OK"]:
                raise JobsctlError(f"pipeline failed: {' '.join(out)}")
            t["loop"].append(int(out[2]) / 1000)
            t["tee"].append(_timed(tee, 1))
            t["null"].append(_timed(f"{curl} -o /dev/null", 1))
            board = fresh_board(tmp / "board", slot)
            prim = upy([str(PRIMITIVES), url, str(ca.cert_path)], board).split()
            if prim[:1] != ["OK"] or int(prim[1]) != 8 * MiB:
                raise JobsctlError(f"primitives failed: {' '.join(prim)}")
            read, sha, write = (int(x) / 1000 for x in prim[2:5])
            t["read"].append(read)
            t["sha"].append(sha)
            t["write"].append(write)
            t["ratio"].append(t["loop"][-1] / (read + sha + write))
        found = {
            frozen: smallest_stable(partial(pipeline_ok, frozen=frozen), 8, 512, 4)
            for frozen in (False, True)
        }
    med = statistics.median
    dev_s, tee_s = med(t["device"]), med(t["tee"])
    rows.append(
        (
            "OTA pipeline, 8 MiB: HTTPS → SHA-256 → flash (iotjobs.ota's own loop, Unix port)",
            f"{8 / dev_s:.1f} MiB/s whole process ({_spread(t['device'], ' s')})",
            f"`curl \\| tee \\| sha256sum`, whole process: {8 / tee_s:.1f} MiB/s "
            f"({_spread(t['tee'], ' s')}), device/C ratio {tee_s / dev_s:.2f}; "
            f"`curl -o /dev/null`: {8 / med(t['null']):.1f} MiB/s; the loop alone (in-process): "
            f"{_spread(t['loop'], ' s')}; {runs} rounds, interleaved",
        )
    )
    prims = med(t["read"]) + med(t["sha"]) + med(t["write"])
    rows.append(
        (
            "OTA loop against the sum of its own primitives (8 MiB, same run, in-process)",
            f"ratio {_spread(t['ratio'])} (goal ≤ 1.15)",
            f"loop median {med(t['loop']):.3f} s; primitives median {prims:.3f} s: TLS readinto "
            f"{med(t['read']):.3f} s, SHA-256 {med(t['sha']):.3f} s, slot writes "
            f"{med(t['write']):.3f} s (bench/ota_primitives.py); {runs} rounds, interleaved",
        )
    )
    command("OTA pipeline", "`python -m bench` (bench_pipeline)")
    command("OTA loop against", "`python -m bench` (bench_pipeline)")
    for size in (1 * MiB, 8 * MiB):
        before, opened, end, during = heaps[size, True]
        mpy = heaps[size, False]
        rows.append(
            (
                f"heap during the download loop, {size // MiB} MiB image",
                f"{kb(during)} frozen, {kb(mpy[3])} .mpy",
                f"live heap's high-water while the loop runs (a collect and a reading at every "
                f"offset checkpoint, every 16 blocks); the loop itself ran under heap_lock (0 "
                f"allocations per block, checkpoints and reports excepted); frozen: "
                f"{kb(before)} live before the connection, {kb(opened)} once it was open, "
                f"{kb(end)} after; .mpy: {kb(mpy[0])} before it, mostly the modules' bytecode",
            )
        )
        command(f"heap during the download loop, {size // MiB}", "`python -m bench`")
    rows.append(
        (
            "smallest -X heapsize for the pipeline (HTTPS, 1 MiB)",
            f"{_stable(found[True])} frozen, {_stable(found[False])} .mpy",
            "the size from which 5 consecutive sizes (4 KB steps) pass, and the lowest size "
            "seen to pass; includes one TLS context (~3 KB of heap here and on a board; "
            "mbedTLS's own buffers are outside the heap on both)",
        )
    )
    command("smallest -X heapsize for the pipeline", "`python -m bench` (bench_pipeline)")


def _timed(shell: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(["bash", "-o", "pipefail", "-c", shell], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------- on the local stack


def bench_stack(tmp: Path, jobs: int, latency_rounds: int, rows: list[Row]) -> None:
    with Stack(tmp / "stack") as stack:
        signing = otajob.signing_key(tmp / "signing")
        data = image.build_app_image("2.0.0", size=1 * MiB)

        def job_ok(k: int, ota: bool, frozen: bool) -> bool:
            # One fresh board at -X heapsize=k KB: does it take the job to SUCCEEDED?
            name = f"heap-{'ota' if ota else 'reboot'}-{'frozen' if frozen else 'mpy'}-{k}"
            stack.create_thing(name)
            board = setup_board(stack.state_dir, name, extra={"ota_key_file": "ota_key.pem"})
            shutil.copy(image.public_key_path(signing), board / "ota_key.pem")
            with DeviceProcess(board, heapsize=f"{k}k", frozen=frozen, profile=None) as dev:
                try:
                    dev.wait_for("no pending job", timeout=20)
                except JobsctlError:
                    return False
                doc: dict[str, Any] = {"operation": "reboot"}
                extra: dict[str, Any] = {}
                if ota:
                    doc, extra = otajob.prepare(stack, data, key=signing)
                stack.iot_client().create_job(
                    jobId=name,
                    targets=[bench_latency.arn(stack, name)],
                    document=json.dumps(doc),
                    **extra,
                )
                status = _final(stack, name, name, timeout=60 if ota else 30)
            return status == "SUCCEEDED"

        agent = {
            f: smallest_stable(partial(job_ok, ota=False, frozen=f), 16, 512, 4)
            for f in (False, True)
        }
        rows.append(
            (
                "smallest -X heapsize for the agent (a reboot job: MQTT over TLS, persisted "
                "state, reset, report after the boot)",
                f"{_stable(agent[True])} frozen, {_stable(agent[False])} .mpy",
                "the agent's high-water, the modules' objects (frozen) or bytecode (.mpy) "
                "included; the size from which 5 consecutive sizes (4 KB steps) pass, and the "
                "lowest size seen to pass",
            )
        )
        command("smallest -X heapsize for the agent", "`python -m bench` (bench_stack)")
        ota = {
            f: smallest_stable(partial(job_ok, ota=True, frozen=f), 16, 512, 4)
            for f in (False, True)
        }
        rows.append(
            (
                "smallest -X heapsize for a whole OTA job (1 MiB, signed)",
                f"{_stable(ota[True])} frozen, {_stable(ota[False])} .mpy",
                "MQTT + HTTPS (two TLS contexts) + ECDSA + reboot and self-test; the size from "
                "which 5 consecutive sizes (4 KB steps) pass, and the lowest size seen to pass",
            )
        )
        command("smallest -X heapsize for a whole", "`python -m bench` (bench_stack)")
        rounds = bench_latency.run(stack, jobs, latency_rounds)
        rows.append(
            ("create-job → IN_PROGRESS, our agent (Unix port)", *bench_latency.figure(rounds))
        )
        command(
            "create-job",
            f"`python -m bench.latency --jobs {jobs} --repeat {latency_rounds}` (also in "
            "`python -m bench`)",
        )
        n, ms = bench_latency.idle_alloc(stack, 30)
        rows.append(
            (
                "heap allocated by an idle agent (connected, no job), per minute",
                f"{kb(n * 60000 / max(ms, 1))}",
                f"measured over {ms / 1000:.0f} s with the GC's automatic passes off (Unix "
                "port: its wait parks on the socket's file descriptor, _fdwait; a "
                "board's, through asyncio's poller, adds a poller entry per wake)",
            )
        )
        command("heap allocated by an idle", "`python -m bench.latency --idle-s 30`")


def bench_streams(tmp: Path, runs: int, rows: list[Row]) -> None:
    """The same signed 1 MiB image over HTTPS (pre-signed URL) and over MQTT streams (JSON,
    CBOR), interleaved, ``runs`` times each: the download loop alone (the two pipeline scripts,
    the library frozen), and whole jobs on fresh boards with every byte through a counting
    proxy (one in front of the broker, one in front of the object store), TLS sessions open at
    once sampled from the proxies, and the smallest -X heapsize for each job."""
    from harness.faultproxy import FaultProxy

    with Stack(tmp / "stack") as stack:
        assert stack.objects is not None
        signing = otajob.signing_key(tmp / "signing")
        data = image.build_app_image("2.0.0", size=1 * MiB)
        key = otajob.object_key(data)
        stack.upload(key, data)
        signature = image.sign(data, signing)
        iot = stack.iot_client()
        iot.create_stream(
            streamId="bench-image",
            files=otajob.stream_files(stack.endpoints["bucket"], key),
            roleArn=otajob.stream_role(stack.endpoints["account_id"]),
        )
        variants = ("https", "mqtt-json", "mqtt-cbor")

        # -- the download loop alone: HTTPS -> flash vs MQTT stream -> flash, same image
        stack.create_thing("pipe")
        pipe_board = setup_board(stack.state_dir, "pipe")
        www = tmp / "www"
        www.mkdir()
        (www / "image.bin").write_bytes(data)
        ca = CertificateAuthority(tmp / "ca")
        loop: dict[str, list[float]] = {v: [] for v in variants}
        with https_files(ca, www) as base:
            for _ in range(runs):
                for v in variants:
                    if v == "https":
                        args = [str(PIPELINE), f"{base}/image.bin", str(ca.cert_path)]
                    else:
                        fmt = v.split("-")[1]
                        args = [str(MQTT_PIPELINE), "bench-image", str(len(data)), fmt]
                    text = upy(args, pipe_board, "112k", frozen=True)
                    ok = [x.split() for x in text.splitlines() if x.startswith("OK ")]
                    if not ok or int(ok[0][1]) != len(data):
                        raise JobsctlError(f"bench: {v} pipeline: {text[-200:]}")
                    loop[v].append(int(ok[0][2]) / 1000)

        with (
            FaultProxy("127.0.0.1", stack.mqtt_port) as broker,
            FaultProxy("127.0.0.1", stack.objects.port) as s3,
        ):

            def document(variant: str) -> dict[str, Any]:
                if variant != "https":
                    doc = otajob.document(data, "", signature)
                    del doc["url"]
                    return {**doc, "stream": "bench-image", "file_id": 0}
                assert stack.objects is not None
                url = stack.objects.presign(stack.objects.bucket, key, 3600)
                url = url.replace(f"localhost:{stack.objects.port}", f"localhost:{s3.port}")
                return otajob.document(data, url, signature)

            def run(variant: str, name: str, heap: str) -> tuple[str, float, int, int]:
                stack.create_thing(name)
                extra = {"ota_key_file": "ota_key.pem", "port": broker.port}
                if variant != "https":
                    extra["ota_stream_format"] = variant.split("-")[1]
                board = setup_board(stack.state_dir, name, extra=extra)
                shutil.copy(image.public_key_path(signing), board / "ota_key.pem")
                with DeviceProcess(board, heapsize=heap, frozen=True) as dev:
                    try:
                        dev.wait_for("no pending job", timeout=20)
                    except JobsctlError:
                        return "NOSTART", 0.0, 0, 0
                    wire0 = _wire(broker) + _wire(s3)
                    peak = [0]  # TLS sessions open at once
                    done = threading.Event()

                    def sample() -> None:
                        while not done.wait(0.005):  # sampling, not synchronisation
                            tls = (len(broker._open) + len(s3._open)) // 2
                            peak[0] = max(peak[0], tls)

                    sampler = threading.Thread(target=sample, daemon=True)
                    sampler.start()
                    iot.create_job(
                        jobId=name,
                        targets=[bench_latency.arn(stack, name)],
                        document=json.dumps(document(variant)),
                    )
                    status = _final(stack, name, name, timeout=120)
                    done.set()
                    sampler.join()
                    created = iot.describe_job(jobId=name)["job"]["createdAt"]
                    ex = iot.describe_job_execution(jobId=name, thingName=name)["execution"]
                    seconds = (ex["lastUpdatedAt"] - created).total_seconds()
                    wire = _wire(broker) + _wire(s3) - wire0
                    return status, seconds, wire, peak[0]

            figures: dict[str, list[tuple[float, int, int]]] = {v: [] for v in variants}
            for r in range(runs):
                for v in variants:
                    status, sec, wire, tls = run(v, f"cmp-{v}-{r}", "112k")
                    if status != "SUCCEEDED":
                        raise JobsctlError(f"bench: OTA over {v} ended {status}")
                    figures[v].append((sec, wire, tls))

            def heap_ok(variant: str, k: int) -> bool:
                return run(variant, f"cmph-{variant}-{k}", f"{k}k")[0] == "SUCCEEDED"

            heaps = {v: smallest(partial(heap_ok, v), 32, 256, 4) for v in variants}

        def cell(v: str) -> str:
            secs = [f[0] for f in figures[v]]
            wire = statistics.median(f[1] for f in figures[v])
            tls = max(f[2] for f in figures[v])
            return (
                f"download loop {min(loop[v]):.2f} s min, {statistics.median(loop[v]):.2f} s "
                f"median; whole job {min(secs):.2f} s min, {statistics.median(secs):.2f} s "
                f"median; {wire / MiB:.2f} MiB on the wire; {tls} TLS "
                f"session{'s' if tls > 1 else ''} open at once; "
                f"smallest heap {_kb_or(heaps[v])}"
            )

        for v in ("mqtt-json", "mqtt-cbor"):
            rows.append(
                (
                    f"OTA, 1 MiB signed, over MQTT streams ({v.split('-')[1].upper()}), "
                    "library frozen",
                    cell(v),
                    f"HTTPS (pre-signed URL), same image, same run: {cell('https')}. "
                    f"{runs} runs each, interleaved; loop: the pipeline scripts; job: created → "
                    "SUCCEEDED by the service's timestamps (download, verify, reset, self-test); "
                    "bytes both ways through counting proxies; heap: smallest -X heapsize, 4 KB "
                    "steps. mbedTLS's buffers live outside the GC heap (here and on a board): "
                    "what MQTT saves is HTTPS's second TLS session, ~41 KB of C heap on this port "
                    "and ~20 KB of IDF heap on an ESP32 (REFERENCE §5)",
                )
            )


def _wire(proxy: Any) -> int:
    return int(proxy.stats.bytes_down + proxy.stats.bytes_up)


def _final(stack: Stack, thing: str, job: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    iot = stack.iot_client()
    while time.monotonic() < deadline:
        ex = iot.describe_job_execution(jobId=job, thingName=thing)["execution"]
        if ex["status"] not in ("QUEUED", "IN_PROGRESS"):
            return str(ex["status"])
        time.sleep(0.2)  # polling the service's record, as an operator would
    return "TIMEOUT"


# ---------------------------------------------------------------- small ones


def bench_footprint(tmp: Path, rows: list[Row]) -> None:
    # As `make deploy` compiles the library for an ESP32 (jobsctl.deploy).
    from jobsctl.deploy import compile_library

    sizes = {}
    for board_path in compile_library(ROOT, tmp / "footprint", "xtensawin"):
        sizes[Path(board_path).stem] = (tmp / "footprint" / board_path).stat().st_size
    per = ", ".join(f"{k} {v / 1024:.1f}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]))
    rows.append(("device library, .mpy total", kb(sum(sizes.values())), f"per module (KB): {per}"))


VERIFY = """
import asyncio, time, binascii
from iotjobs import ecdsa
k = ecdsa.load_pubkey(open(%r).read())
d = binascii.unhexlify(%r)
s = binascii.a2b_base64(%r)
ts = []
for i in range(%d):
    t0 = time.ticks_us()
    assert asyncio.run(ecdsa.verify(k, d, s))
    ts.append(time.ticks_diff(time.ticks_us(), t0))
ts.sort()
print(ts[len(ts) // 2], ts[0], ts[-1])
"""


def bench_ecdsa(tmp: Path, n: int, rows: list[Row]) -> None:
    key = otajob.signing_key(tmp / "ecdsa")
    data = b"firmware" * 1000
    sig = image.sign(data, key)
    code = VERIFY % (
        str(image.public_key_path(key)),
        hashlib.sha256(data).hexdigest(),
        sig,
        n,
    )
    out = upy(["-c", code], tmp).split()
    if len(out) != 3:
        raise JobsctlError(f"ecdsa bench failed: {' '.join(out)}")
    med, lo, hi = (int(x) / 1000 for x in out)
    rows.append(
        (
            "ECDSA P-256 verify, pure MicroPython (Unix port)",
            f"{med:.1f} ms",
            f"median of {n}; min {lo:.1f} ms, max {hi:.1f} ms",
        )
    )


def bench_fleet(sizes: list[int], rate: float, rounds: int, rows: list[Row]) -> None:
    """The service at each fleet size (a burst, ``rounds`` jobs, min and median), and at the
    largest under a steady arrival of ``rate`` devices/s: throughput, latency, and the
    service's CPU per reply, the figure that stays flat when nothing is O(fleet)."""
    for devices in sizes:
        rs = bench_service.run(devices, 300, rounds=rounds)
        rows.append(_fleet_row(devices, "burst", rs))
        command(
            f"service: {devices} devices, burst",
            f"`python -m bench.service --devices {devices} --rounds {rounds}`",
        )
    devices = sizes[-2] if len(sizes) > 1 else sizes[-1]
    if len(os.sched_getaffinity(0)) >= 2:  # the same burst with the service on a core of its own
        rs = bench_service.run(devices, 300, rounds=rounds, split=True)
        rows.append(_fleet_row(devices, "burst, the service on a CPU of its own", rs))
        command(
            f"service: {devices} devices, burst, the service on a CPU of its own",
            f"`python -m bench.service --devices {devices} --rounds {rounds} --split-cores`",
        )
    rs = bench_service.run(devices, 300, rate=rate, rounds=rounds)
    rows.append(_fleet_row(devices, f"steady {rate:g} devices/s", rs))
    command(
        f"service: {devices} devices, steady",
        f"`python -m bench.service --devices {devices} --rate {rate:g} --rounds {rounds}`",
    )


def _fleet_row(devices: int, mode: str, rs: list[dict[str, Any]]) -> Row:
    tput = [r["throughput_replies_per_s"] for r in rs]
    cpu = [r["service_cpu_us_per_reply"] for r in rs]
    p50 = [r["latency_p50_ms"] for r in rs]
    p99 = [r["latency_p99_ms"] for r in rs]
    rejected = sum(r["rejected"] for r in rs)
    return (
        f"service: {devices} devices, {mode}, start-next + 2 updates each (MQTT, mTLS)",
        f"{max(tput):.0f} replies/s best, {statistics.median(tput):.0f} median",
        f"service CPU per reply {_spread(cpu, ' µs', '.0f')}; broker "
        f"{statistics.median(r['broker_cpu_us_per_reply'] for r in rs):.0f} µs; reply latency "
        f"p50 {_spread(p50, ' ms', '.0f')}, p99 {_spread(p99, ' ms', '.0f')}; "
        f"{rs[0]['replies']} replies a round, {len(rs)} rounds, {rejected} rejected; "
        f"devices in 2 load-generator processes ("
        f"{statistics.median(r['drivers_cpu_us_per_reply'] for r in rs):.0f} µs per reply), "
        f"the service in its own; cores: {rs[0]['cores']}; load average "
        f"{min(r['load_average'] for r in rs):.2f}-{max(r['load_average'] for r in rs):.2f}",
    )


# ---------------------------------------------------------------- main


def bench_guest_rows(tmp: Path, runs: int, rows: list[Row]) -> None:
    """The agent as a guest in the example sensor application (bench.guest)."""
    tmp.mkdir(parents=True, exist_ok=True)
    rs, named, pieces = bench_guest.run(tmp, runs)
    for a, b, c in bench_guest.rows(rs, DEFAULT, pieces, named):
        command(a, "`python -m bench.guest`")
        rows.append((a, b, c))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer runs, 100 service devices")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--only",
        choices=["pipeline", "ecdsa", "footprint", "stack", "streams", "fleet", "delta", "guest"],
        action="append",
        help="run only these benchmarks (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    runs, jobs, sizes, rounds = (2, 5, [100], 1) if args.quick else (7, 50, [100, 1000, 3000], 3)
    rows: list[Row] = []
    before = previous_figures(args.output)
    load0 = _load()
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="jobsctl-bench-") as tmpdir:
            tmp = Path(tmpdir)
            steps: dict[str, Callable[[], None]] = {
                "pipeline": lambda: bench_pipeline(tmp / "pipeline", runs, rows),
                "ecdsa": lambda: bench_ecdsa(tmp, 20, rows),
                "footprint": lambda: bench_footprint(tmp, rows),
                "stack": lambda: bench_stack(tmp / "stack", jobs, rounds, rows),
                "streams": lambda: bench_streams(tmp / "streams", runs, rows),
                "fleet": lambda: bench_fleet(sizes, 300.0, rounds, rows),
                "delta": lambda: bench_delta.run(tmp / "delta", runs, rows),
                "guest": lambda: bench_guest_rows(tmp / "guest", 3 if runs > 2 else 1, rows),
            }
            for name, step in steps.items():
                if args.only and name not in args.only:
                    continue
                (tmp / "pipeline").mkdir(exist_ok=True)
                step()
                print(table(rows[-1:]).splitlines()[-1], flush=True)
            memory = bench_memory.table(
                bench_memory.run(tmp / "memory", list(PROFILES), list(bench_memory.JOBS))
            )
            frozen = bench_memory.table(
                bench_memory.run(tmp / "memory-frozen", [DEFAULT], list(bench_memory.JOBS), True)
            )
    except JobsctlError as exc:
        print(f"jobsctl bench: {exc}", file=sys.stderr)
        return 1
    header = (
        f"# Benchmarks\n\n`make bench` on {_machine()}, "
        f"{time.strftime('%Y-%m-%d')}, {time.monotonic() - t0:.0f} s; load average "
        f"(1 min) {load0} at the start, {_load()} at the end (the machine is shared: other "
        "work competes for the same cores, so ratios measured in the same run are the "
        "figures to trust).\n\n"
    )
    text = header + table(rows, before) + "\n"
    text += (
        "\n## Memory per job type and board profile\n\n"
        "`python -m bench.memory` (a part of `make bench`): one fresh simulated board "
        "per row (stock-firmware port, lib/ as .mpy, the profile's memory model, "
        "docs/board-model.md) takes the job and is switched off; figures from its port's "
        "memory report. GC headroom: 1 - live high-water / heap size reached; IDF headroom: "
        "lowest free / budget (GC growth and TLS counted). Goal: 15 % on both on esp32-plain."
        "\n\n" + memory + "\n"
        "\nThe same on the custom firmware (`python -m bench.memory --frozen --profile "
        f"{DEFAULT}`: the library frozen in, as `make firmware` builds it, so its "
        "code stays in flash and out of the GC heap):\n\n" + frozen + "\n"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print()
    print(text)
    return 0


def _load() -> str:
    import os

    return f"{os.getloadavg()[0]:.2f}"


def _machine() -> str:
    import os
    import platform

    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


if __name__ == "__main__":
    sys.exit(main())
