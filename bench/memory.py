"""Memory per job type and board profile, a part of ``make bench`` (not a test).

    python -m bench.memory [--profile P ...] [--job J ...] [--frozen] [--dense]
    python -m bench.memory --modules


For each profile (jobsctl.boardmodel) and job, a fresh simulated board on the stock-firmware
port (``lib/`` as .mpy files, as ``make deploy`` puts it on a board; ``--frozen``: the custom
firmware) takes one job on a local stack, then is switched off; its port's memory report
(``SIM_MEM_REPORT``, one line per power cycle, docs/board-model.md) gives:

- GC heap: the largest live size after a collection (``gc_max_live``) and the largest size the
  heap reached (``gc_max_total``: the first area plus what it grew by from the IDF heap);
  headroom = 1 - live / size reached;
- IDF heap: the high-water (total - the lowest free seen, GC growth and TLS sessions both
  counted); headroom = lowest free / total, what ``idf_heap_info``'s minimum-free field gives.

The goal (issue 14): at least 15 % headroom on both for every job on ``esp32-plain``.

``--dense``: the board collects after every 256 bytes allocated (``gc.threshold(256)``, set by
``sim/boardrun.py`` from ``SIM_GC_THRESHOLD``), so the live high-water is sampled densely instead
of at the collections the heap happened to need (docs/memory.md section 5).

``--modules``: where the live heap goes. One stock-firmware board process (no network) imports
the modules in the order a board loads them (the firmware's, the idle agent's, then each job
type's) and prints, per module, the GC heap its import added and the dynamic qstrs (interned
names, kept for good, even after the module is unloaded) and the bytes of qstr pools the
process holds after it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobsctl import boardmodel, delta, image, otajob
from jobsctl.checkout import unix_port
from jobsctl.device import DeviceProcess, device_env, setup_board
from jobsctl.errors import JobsctlError
from jobsctl.stack import Stack

JOBS = (
    "reboot",
    "config",
    "ota-1MiB",
    "ota-1.5MiB",
    "ota-stream-1MiB",
    "ota-delta-1MiB",
    "ota-delta-stream-1MiB",
    "bundle",
    "config+sensor",
    "ota-1MiB+sensor",
)
# A job name ending in SENSOR: the board runs the example application (examples/sensor, its
# asyncio task beside the agent's, publishing through the agent's session) during the job.
SENSOR = "+sensor"
GOAL = 0.15
DENSE_THRESHOLD = 256  # --dense: bytes allocated between collections
SLOT = 0x180000  # the OTA slot of the simulated board (1.5 MiB)
APP_V1 = {"sensor.py": b"VERSION = 1\n", "selftest.py": b"def run(ctx):\n    return None\n"}
APP_V2 = {"sensor.py": b"VERSION = 2\n", "selftest.py": b"def run(ctx):\n    return None\n"}


@dataclass
class Measure:
    profile: str
    job: str
    status: str
    reason: str
    gc_first: int
    gc_max_total: int
    gc_max_live: int
    idf_total: int
    idf_min_free: int

    @property
    def gc_headroom(self) -> float:
        return 1 - self.gc_max_live / self.gc_max_total if self.gc_max_total else 0.0

    @property
    def idf_high_water(self) -> int:
        return self.idf_total - self.idf_min_free

    @property
    def idf_headroom(self) -> float:
        return self.idf_min_free / self.idf_total if self.idf_total else 0.0

    @property
    def meets_goal(self) -> bool:
        return self.status == "SUCCEEDED" and min(self.gc_headroom, self.idf_headroom) >= GOAL


def _arn(stack: Stack, thing: str) -> str:
    ep = stack.endpoints
    return f"arn:aws:iot:{ep['region']}:{ep['account_id']}:thing/{thing}"


def final(stack: Stack, thing: str, job: str, timeout: float) -> dict[str, Any]:
    """The execution once it left QUEUED/IN_PROGRESS (or {"status": "TIMEOUT"})."""
    deadline = time.monotonic() + timeout
    iot = stack.iot_client()
    while time.monotonic() < deadline:
        ex = iot.describe_job_execution(jobId=job, thingName=thing)["execution"]
        if ex["status"] not in ("QUEUED", "IN_PROGRESS"):
            return dict(ex)
        time.sleep(0.2)  # polling the service's record, as an operator would
    return {"status": "TIMEOUT"}


def _delta_base(board: Path) -> bytes:
    """A 1 MiB 1.0.0 image in the board's running slot: the base a delta job patches."""
    old = image.build_app_image("1.0.0", size=1024 * 1024)
    with (board / "flash" / "ota_0.bin").open("r+b") as f:
        f.write(old)
    return old


def _document(
    stack: Stack, job: str, signing: Path, board: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    if job == "reboot":
        return {"operation": "reboot"}, {}
    if job == "config":
        return {"operation": "config", "set": {"log_level": "debug"}}, {}
    if job == "ota-stream-1MiB":  # afr_ota over MQTT streams only: the one TLS session
        data = image.build_app_image("2.0.0", size=1024 * 1024)
        obj = otajob.object_key(data)
        stack.upload(obj, data)
        ep = stack.endpoints
        sid = f"mem-stream-{time.monotonic_ns()}"
        stack.iot_client().create_stream(
            streamId=sid,
            files=otajob.stream_files(ep["bucket"], obj),
            roleArn=otajob.stream_role(ep["account_id"]),
        )
        return otajob.afr_document(data, image.sign(data, signing), stream=sid), {}
    if job in ("ota-delta-1MiB", "ota-delta-stream-1MiB"):
        # A patch only (no full image offered), 1.0.0 -> 2.0.0; over HTTPS, or as file 1 of a
        # stream (the one TLS session).
        old = _delta_base(board)
        new = image.build_app_image("2.0.0", size=len(old), seed="iotjobs-sim/1.0.0")
        doc, extra = otajob.prepare(stack, new, key=signing)
        patch = delta.create(old, new)
        key = f"ota/mem-{patch.sha256[:16]}.patch"
        url = stack.upload(key, patch.data)
        doc["delta"] = patch.document(otajob.placeholder(url))
        del doc["url"]
        if job == "ota-delta-stream-1MiB":
            ep = stack.endpoints
            sid = f"mem-dstream-{time.monotonic_ns()}"
            stack.iot_client().create_stream(
                streamId=sid,
                files=otajob.stream_files(ep["bucket"], key, otajob.DELTA_FILE_ID),
                roleArn=otajob.stream_role(ep["account_id"]),
            )
            del doc["delta"]["url"]
            doc["delta"].update(stream=sid, file_id=otajob.DELTA_FILE_ID)
            extra = {}
        return doc, extra
    if job.startswith("ota-"):
        size = 1 * 1024 * 1024 if job == "ota-1MiB" else SLOT
        return otajob.prepare(stack, image.build_app_image("2.0.0", size=size), key=signing)
    if job == "bundle":
        bundle = otajob.build_bundle(APP_V2)
        return otajob.prepare_bundle(stack, bundle, "app-2", key=signing)
    raise JobsctlError(f"no job {job!r} (known: {', '.join(JOBS)})")


def measure(
    stack: Stack, signing: Path, profile: str, job: str, frozen: bool = False, dense: bool = False
) -> Measure:
    """One fresh board of ``profile`` takes ``job``; its memory report, read after power-off."""
    name = f"mem-{profile}-{job.replace('.', '_').replace('+', '-')}{'-frozen' if frozen else ''}"
    stack.create_thing(name)
    board = setup_board(stack.state_dir, name, partition_size=SLOT, extra={"ota_key_file": "k.pem"})
    shutil.copy(image.public_key_path(signing), board / "k.pem")
    app = board / "app"
    app.mkdir(exist_ok=True)
    for fname, data in APP_V1.items():
        (app / fname).write_bytes(data)
    (app / ".version").write_text("app-1")
    if job.endswith(SENSOR):
        from jobsctl.checkout import ROOT

        for f in (ROOT / "examples" / "sensor").glob("*.py"):
            shutil.copy(f, app / f.name)
    report = board / "mem.jsonl"
    report.unlink(missing_ok=True)
    doc, extra = _document(stack, job.removesuffix(SENSOR), signing, board)
    env = {"SIM_GC_THRESHOLD": str(DENSE_THRESHOLD)} if dense else None
    dev = DeviceProcess(board, profile=profile, mem_report=report, frozen=frozen, env=env)
    try:
        dev.start()
        dev.wait_for("no pending job", timeout=60)
        mark = dev.mark()
        stack.iot_client().create_job(
            jobId=name, targets=[_arn(stack, name)], document=json.dumps(doc), **extra
        )
        ex = final(stack, name, name, timeout=180)
        if ex["status"] == "SUCCEEDED":
            # Idle again (after the reboot, for the jobs that reboot): the agent's steady state
            # after the job is part of what it must fit.
            dev.wait_for("no pending job", since=mark, timeout=30)
    except JobsctlError as exc:
        ex = {"status": "BOARD FAILED", "statusDetails": {"detailsMap": {"reason": str(exc)}}}
    finally:
        dev.power_off()
    lines = (
        [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    )
    if not lines:
        raise JobsctlError(f"{name}: no memory report in {report}")
    reason = ex.get("statusDetails", {}).get("detailsMap", {}).get("reason", "")
    return Measure(
        profile,
        job,
        str(ex["status"]),
        str(reason).splitlines()[0][:80] if reason else "",
        int(lines[0]["gc_first"]),
        max(int(r["gc_max_total"]) for r in lines),
        max(int(r["gc_max_live"]) for r in lines),
        int(lines[0]["idf_total"]),
        min(int(r["idf_min_free"]) for r in lines),
    )


def run(
    tmp: Path, profiles: list[str], jobs: list[str], frozen: bool = False, dense: bool = False
) -> list[Measure]:
    out = []
    with Stack(tmp / "stack") as stack:
        signing = otajob.signing_key(tmp / "signing")
        for profile in profiles:
            for job in jobs:
                m = measure(stack, signing, profile, job, frozen, dense)
                print(row(m), flush=True)
                out.append(m)
    return out


# (group, modules) in the order a board loads them; each group's modules stay loaded after it,
# as their qstrs do on a board that has run every job type once.
MODULE_GROUPS = (
    ("C modules, on a board and on the board port", ("esp32", "machine", "network")),
    ("frozen in the stock firmware", ("asyncio", "ssl", "umqtt.simple")),
    ("idle agent", ("iotjobs.protocol", "iotjobs.agent", "iotjobs.transport", "iotjobs.board")),
    ("the Unix port's MQTT wait, C in the board port (a board has none)", ("_fdwait",)),
    ("idle agent (boot: app, config)", ("iotjobs.app", "iotjobs.settings", "iotjobs.config")),
    ("every job", ("iotjobs.job", "iotjobs.context")),
    ("ota download", ("iotjobs.ota", "iotjobs.fetch", "iotjobs.http", "iotjobs.slot")),
    ("ota: document checks, per call", ("iotjobs.otadoc",)),
    ("ota verify", ("iotjobs.otaboot", "iotjobs.ecdsa", "iotjobs.secver")),
    ("bundle", ("iotjobs.bundle", "iotjobs.appswap")),
    ("MQTT streams, afr_ota", ("iotjobs.stream", "iotjobs.afr")),
    ("delta", ("iotjobs.delta",)),
    ("rare paths, the application's side", ("iotjobs.mishap", "iotjobs.guest")),
)
_PROBE = """
import gc, micropython
def _q():
    micropython.qstr_info()
for _m in %r:
    gc.collect()
    _a = gc.mem_alloc()
    __import__(_m)
    gc.collect()
    print("MOD", _m, gc.mem_alloc() - _a)
    _q()
"""
_QSTR = re.compile(r"n_pool=(\d+), n_qstr=(\d+), n_str_data_bytes=(\d+), n_total_bytes=(\d+)")


@dataclass
class ModuleCost:
    group: str
    module: str
    heap: int  # GC heap bytes its import added (its code, constants, new qstrs, pool growth)
    qstrs: int  # dynamic qstrs in the process after it
    qstr_bytes: int  # bytes of qstr pools and their strings after it


def module_costs(profile: str = boardmodel.DEFAULT) -> list[ModuleCost]:
    """Import every device module in MODULE_GROUPS order on the stock-firmware port (lib/ as
    .mpy, the profile's first GC area) and read what each added."""
    names = [m for _, mods in MODULE_GROUPS for m in mods]
    heap = boardmodel.profile(profile).heapsize
    proc = subprocess.run(
        [str(unix_port()), "-X", f"heapsize={heap}", "-c", _PROBE % (names,)],
        env=device_env(profile),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise JobsctlError(f"bench.memory --modules: {proc.stderr.strip().splitlines()[-1:]}")
    group = {m: g for g, mods in MODULE_GROUPS for m in mods}
    out: list[ModuleCost] = []
    mod, added = "", 0
    for line in proc.stdout.splitlines():
        if line.startswith("MOD "):
            _, mod, n = line.split()
            added = int(n)
        elif (q := _QSTR.search(line)) and mod:
            out.append(ModuleCost(group[mod], mod, added, int(q.group(2)), int(q.group(4))))
            mod = ""
    return out


def module_table(costs: list[ModuleCost]) -> str:
    rows = [
        "| loaded for | module | GC heap its import added | dynamic qstrs after "
        "| qstr pools after |",
        "|---|---|---|---|---|",
    ]
    total = 0
    for c in costs:
        total += c.heap
        rows.append(f"| {c.group} | {c.module} | {c.heap:,} B | {c.qstrs} | {c.qstr_bytes:,} B |")
    rows.append(f"| all | | {total:,} B | | |")
    return "\n".join(rows)


def kb(n: float) -> str:
    return f"{n / 1024:.1f} KB"


def row(m: Measure) -> str:
    status = m.status + (f" ({m.reason})" if m.status != "SUCCEEDED" and m.reason else "")
    goal = "yes" if m.meets_goal else "**no**"
    return (
        f"| {m.profile} | {m.job} | {status} | {kb(m.gc_max_live)} of {kb(m.gc_max_total)} "
        f"(first area {kb(m.gc_first)}) | {m.gc_headroom:.0%} | {kb(m.idf_high_water)} of "
        f"{kb(m.idf_total)} | {m.idf_headroom:.0%} | {goal} |"
    )


HEADER = (
    "| profile | job | status | GC heap: live high-water of size reached | GC headroom "
    "| IDF heap high-water of budget | IDF headroom | ≥ 15 % both |\n"
    "|---|---|---|---|---|---|---|---|"
)


def table(measures: list[Measure]) -> str:
    return "\n".join([HEADER] + [row(m) for m in measures])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--profile", action="append", choices=list(boardmodel.PROFILES))
    parser.add_argument("--job", action="append", choices=JOBS)
    parser.add_argument("--frozen", action="store_true", help="the custom-firmware board")
    parser.add_argument(
        "--dense", action="store_true", help="collect after every 256 bytes allocated"
    )
    parser.add_argument(
        "--modules", action="store_true", help="what each device module's import takes"
    )
    args = parser.parse_args(argv)
    if args.modules:
        if args.job or args.frozen or args.dense or len(args.profile or ()) > 1:
            parser.error("--modules takes one --profile at most, and no --job, --frozen, --dense")
        try:
            print(module_table(module_costs((args.profile or [boardmodel.DEFAULT])[0])))
        except JobsctlError as exc:
            print(f"jobsctl bench: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        with tempfile.TemporaryDirectory(prefix="jobsctl-bench-memory-") as tmp:
            measures = run(
                Path(tmp),
                args.profile or list(boardmodel.PROFILES),
                args.job or list(JOBS),
                args.frozen,
                args.dense,
            )
    except JobsctlError as exc:
        print(f"jobsctl bench: {exc}", file=sys.stderr)
        return 1
    print()
    print(table(measures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
