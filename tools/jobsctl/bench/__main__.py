"""``python -m jobsctl.bench``: run the benchmark sections and write bench/results.md."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import platform
import sys

from ..devcheck import ROOT
from .table import Row, markdown

# Section modules, in the order of the table. Each has run() -> list[Row].
SECTIONS = ["footprint", "ecdsa", "ota_throughput", "heap", "latency", "service"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobsctl.bench")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section")
    parser.add_argument("--no-write", action="store_true", help="print only; keep results.md")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    for name in args.only or SECTIONS:
        try:
            mod = importlib.import_module(f"jobsctl.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"jobsctl.bench.{name}":
                raise
            rows.append(Row(name, "(not built yet)", "-"))
            continue
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        rows += mod.run()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"# Benchmark results\n\n{when}, {platform.machine()}, {platform.python_version()}, "
        "MicroPython 1.25.0 Unix port. Produced by `make bench`."
    )
    text = markdown(rows, header)
    print(text)
    if not args.no_write:
        out = ROOT / "bench" / "results.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
