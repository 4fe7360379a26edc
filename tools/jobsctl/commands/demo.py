"""``jobsctl demo``: the fleet demo (see jobsctl.demo)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .. import boardmodel
from ..demo import COLOURS, Demo, Result, ota_available
from . import state_dir_argument
from .image import parse_size


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="a local stack, N simulated boards, one job for the fleet, live",
        description=(
            "Start the local stack in DIR (emptied first: only a folder an earlier demo made, "
            "never one a running stack holds), provision N simulated ESP32 boards "
            "running the real device code, create one job for their group and follow it live. "
            "Exits 0 only if every device ends SUCCEEDED (and, for OTA, runs the new version). "
            "Writes DIR/rollout.png, a timeline of every device."
        ),
    )
    p.add_argument("--devices", type=int, default=5, help="number of devices (default 5)")
    p.add_argument(
        "--job",
        choices=("ota", "config"),
        default=None,
        help="job type (default: ota when available, else config)",
    )
    state_dir_argument(
        p,
        required=False,
        default="build/demo",
        more="the demo runs a stack of its own here (default build/demo) and empties it "
        "first: a new or empty folder, or one an earlier demo made",
    )
    p.add_argument(
        "--max-per-minute",
        type=int,
        default=60,
        help="rollout rate: executions started per minute (default 60; 0 for no limit)",
    )
    p.add_argument(
        "--minute",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="real seconds per minute of the local service's clock (default 60; e.g. 5 plays "
        "a staged rollout 12 times faster)",
    )
    p.add_argument(
        "--image-size", type=parse_size, default=1 << 20, help="OTA image size (default 1M)"
    )
    p.add_argument("--timeout", type=float, default=300, help="seconds before giving up")
    p.add_argument("--heapsize", default=None, help="first GC heap area per device, e.g. 64k")
    p.add_argument(
        "--profile",
        default=boardmodel.DEFAULT,
        choices=list(boardmodel.PROFILES),
        help=f"the boards' memory (docs/board-model.md; default {boardmodel.DEFAULT})",
    )
    p.set_defaults(func=run)


def _table(demo: Demo) -> Group:
    t = Table(box=None, pad_edge=False)
    for col in ("device", "status", "step", "progress", "version", "readings", "reason"):
        t.add_column(col)
    for b in demo.boards:
        colour = COLOURS.get(b.status, "white")
        bar: Any = ProgressBar(total=1.0, completed=b.progress or 0.0, width=20)
        if b.progress is None:
            bar = Text("")
        t.add_row(
            b.name,
            Text(b.status, style=colour),
            b.step,
            bar,
            b.version,
            f"{len(b.readings)} (gap {b.gap():.1f} s)",
            Text(b.reason[:60], overflow="ellipsis"),
        )
    head = Text(f"{demo.phase}  ({demo.elapsed:.1f} s)", style="bold")
    return Group(head, t)


def live_view(console: Console) -> bool:
    """A redrawn table only on an interactive terminal. A pipe or a CI log (even with
    FORCE_COLOR or TTY_COMPATIBLE, which make rich treat it as a terminal) gets one line per
    change instead, never every board on every tick."""
    if os.environ.get("CI") or os.environ.get("TERM") == "dumb":
        return False
    return console.is_interactive and sys.stdout.isatty()


def run(args: argparse.Namespace) -> int:
    console = Console()
    kind = args.job or ("ota" if ota_available() else "config")
    live: Live | None = None
    seen: dict[str, str] = {}

    def on_update(demo: Demo) -> None:
        if live is not None:
            live.update(_table(demo))
            return
        # Not a terminal (CI, a pipe): one line per change instead of a redrawn table.
        for b in demo.boards:
            now = f"{b.status} {b.step} {b.version}".strip()
            if seen.get(b.name) != now:
                seen[b.name] = now
                print(f"{demo.elapsed:6.1f}s {b.name}: {now}", flush=True)

    demo = Demo(
        args.state_dir,
        devices=args.devices,
        kind=kind,
        max_per_minute=args.max_per_minute or None,
        timeout=args.timeout,
        image_size=args.image_size,
        heapsize=args.heapsize,
        profile=args.profile,
        on_update=on_update,
        minute=args.minute,
    )
    print(f"jobsctl demo: {args.devices} devices, {kind} job, state in {args.state_dir}")
    if live_view(console):
        with Live(_table(demo), console=console, refresh_per_second=8) as live:
            result = demo.run()
    else:
        result = demo.run()
    _summary(console, result)
    return 0 if result.ok else 1


def _summary(console: Console, r: Result) -> None:
    counts: dict[str, int] = {}
    for b in r.boards:
        counts[b.status] = counts.get(b.status, 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    console.print(f"\n{r.job_id}: {parts} in {r.seconds:.1f} s")
    for b in r.boards:
        if b.status != "SUCCEEDED":
            console.print(f"  {b.name}: {b.status} {b.reason}")
    gaps = [b.gap() for b in r.boards]
    console.print(
        f"sensor readings during the rollout: {sum(len(b.readings) for b in r.boards)}, "
        f"longest gap on a board {max(gaps, default=0.0):.1f} s"
    )
    if r.png:
        console.print(f"timeline: {r.png}")
    if r.ok:
        console.print("[green]demo: every device succeeded[/green]")
    else:
        print("jobsctl demo: not every device succeeded", file=sys.stderr)
