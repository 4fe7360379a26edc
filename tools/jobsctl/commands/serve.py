"""``jobsctl serve``: the local stack in the foreground until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from ..service.quotas import ACTIVE_JOBS, Quotas
from ..stack import Stack
from . import state_dir_argument


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="run mosquitto, the Jobs service and the object store until Ctrl-C",
        description="Run the local AWS IoT Jobs stack on loopback; writes DIR/endpoints.json.",
    )
    state_dir_argument(p, more="the stack runs here and keeps its state (e.g. .local)")
    p.add_argument("--mqtt-port", type=int, default=0, help="broker port (default: a free one)")
    p.add_argument("--control-port", type=int, default=0, help="control-plane HTTPS port")
    p.add_argument("--s3-port", type=int, default=0, help="object store HTTPS port")
    p.add_argument(
        "--throttle", type=float, default=None, help="data-plane requests per second per thing"
    )
    p.add_argument(
        "--max-active-jobs",
        type=int,
        default=ACTIVE_JOBS,
        metavar="N",
        help=f"CreateJob quota of IN_PROGRESS/SCHEDULED jobs (default {ACTIVE_JOBS}; 0: none)",
    )
    p.add_argument(
        "--api-rate",
        type=float,
        default=None,
        metavar="N",
        help="control-plane requests per second per operation (default: unlimited)",
    )
    p.add_argument(
        "--plaintext-control",
        action="store_true",
        help="serve the control plane over plain HTTP (insecure; for debugging only)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # A plain flag, not a threading.Event: a handler that set() an Event could block for ever
    # on the Event's own lock when the signal lands while the main thread holds it in wait().
    stop: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stop.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    stack = Stack(
        args.state_dir,
        mqtt_port=args.mqtt_port,
        control_port=args.control_port,
        s3_port=args.s3_port,
        throttle_per_second=args.throttle,
        plaintext_control=args.plaintext_control,
        quotas=Quotas(active_jobs=args.max_active_jobs or None, api_rate_per_second=args.api_rate),
    )
    try:
        endpoints = stack.start()
        shown = {k: v for k, v in endpoints.items() if k != "aws_secret_access_key"}
        print(json.dumps(shown, indent=2), flush=True)
        print(f"jobsctl: serving; endpoints in {stack.endpoints_file}; Ctrl-C stops", flush=True)
        while not stop:
            time.sleep(0.2)  # a signal interrupts the sleep; the flag ends the loop
        print("jobsctl: stopping", file=sys.stderr, flush=True)
    finally:
        stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
