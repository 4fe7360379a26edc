"""Memory high-water marks of each job type on each board profile (not a test).

    .venv/bin/python bench/job_memory.py [--profiles esp32-plain,esp32-tight] [--frozen]

For every job (reboot, config, signed OTA of a 1 MiB and a 1.5 MiB image, a signed bundle) a
fresh simulated board (the stock-firmware board port, lib/ as .mpy files as `make deploy` puts
them, unless --frozen) runs the job end to end on the local stack with the profile's memory
(jobsctl.boardmodel); the port writes its high-water marks at every exit (SIM_MEM_REPORT, one
JSON line per power cycle). Printed per job and profile: the job's final status, the largest
live GC heap after a collection and the largest GC heap total (first area + grown areas), the
lowest free ESP-IDF heap, and the headroom left: GC = 1 - live / first area, IDF = lowest
free / IDF total.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jobsctl import boardmodel, image, otajob
from jobsctl.device import DeviceProcess, setup_board
from jobsctl.stack import Stack

MiB = 1 << 20
JOBS = ("reboot", "config", "ota-1M", "ota-1.5M", "bundle")
APP = {"sensor.py": b"VERSION = 2\n", "selftest.py": b"def run(ctx):\n    return None\n"}


def _final(stack: Stack, thing: str, job: str, timeout: float) -> dict[str, Any]:
    iot = stack.iot_client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ex = iot.describe_job_execution(jobId=job, thingName=thing)["execution"]
        if ex["status"] not in ("QUEUED", "IN_PROGRESS"):
            return dict(ex)
        time.sleep(0.2)  # polling the service's record, as an operator would
    return {"status": "TIMEOUT"}


def run_job(stack: Stack, tmp: Path, signing: Path, kind: str, profile: str, frozen: bool) -> str:
    name = f"mem-{kind.replace('.', '')}-{profile}-{'frozen' if frozen else 'mpy'}"
    stack.create_thing(name)
    board = setup_board(stack.state_dir, name, extra={"ota_key_file": "ota_key.pem"})
    shutil.copy(image.public_key_path(signing), board / "ota_key.pem")
    report = tmp / f"{name}.jsonl"
    extra: dict[str, Any] = {}
    if kind == "reboot":
        doc: dict[str, Any] = {"operation": "reboot"}
    elif kind == "config":
        doc = {"operation": "config", "set": {"log_level": "info", "settings": {"a": 1}}}
    elif kind.startswith("ota"):
        size = MiB if kind == "ota-1M" else 0x180000
        doc, extra = otajob.prepare(stack, image.build_app_image("2.0.0", size=size), key=signing)
    else:
        doc, extra = otajob.prepare_bundle(
            stack, otajob.build_bundle(APP), "app-2", key=signing
        )
    with DeviceProcess(board, profile=profile, mem_report=report, frozen=frozen) as dev:
        dev.wait_for("no pending job", timeout=30)
        ep = stack.endpoints
        arn = f"arn:aws:iot:{ep['region']}:{ep['account_id']}:thing/{name}"
        stack.iot_client().create_job(
            jobId=name, targets=[arn], document=json.dumps(doc), **extra
        )
        ex = _final(stack, name, name, timeout=180)
        dev.wait_for("no pending job", since=dev.mark() - 5, timeout=30)
        # Ctrl-C (KeyboardInterrupt) ends the board's process normally: the port writes the
        # last power cycle's marks at exit (a stop() would be a power cut, which writes none).
        assert dev._proc is not None
        os.killpg(dev._proc.pid, signal.SIGINT)
        dev.wait_exit(timeout=30)
    marks = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    p = boardmodel.profile(profile)
    live = max(m["gc_max_live"] for m in marks)
    total = max(m["gc_max_total"] for m in marks)
    idf_min = min(m["idf_min_free"] for m in marks)
    reason = ex.get("statusDetails", {}).get("detailsMap", {}).get("reason", "")
    return (
        f"| {kind} | {profile} | {'frozen' if frozen else '.mpy'} | {ex['status']} | "
        f"{live / 1024:.1f} KB | {total / 1024:.1f} KB | {idf_min / 1024:.1f} KB of "
        f"{p.idf_total / 1024:.0f} KB | {100 * (1 - live / p.gc_first):.0f} % | "
        f"{100 * idf_min / p.idf_total:.0f} % | {reason} |"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profiles", default="esp32-plain,esp32-tight")
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--frozen", action="store_true")
    args = ap.parse_args()
    print(
        "| job | profile | library | status | GC live max | GC total max | IDF free min | "
        "GC headroom | IDF headroom | reason |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="jobmem-") as t:
        tmp = Path(t)
        with Stack(tmp / "stack") as stack:
            signing = otajob.signing_key(tmp / "signing")
            for profile in args.profiles.split(","):
                for kind in args.jobs.split(","):
                    print(run_job(stack, tmp, signing, kind, profile, args.frozen), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
