"""Delta OTA figures for ``make bench`` (its own section; also ``python -m bench.delta``).

Two real firmware pairs built here, labelled as what they are:

- **one-line change**: the Unix port with the device code frozen in (``build/micropython-frozen``,
  what firmware/manifest.py makes of an ESP32 firmware), built twice by firmware/unix-port.sh
  from copies of lib/: as it is, and with one line of lib/iotjobs/fetch.py (the download
  pipeline) changed (a log message); both stripped, as firmware images carry no symbols;
- **another build**: the plain 1.25 Unix port (``build/micropython``) to the same port with the
  agent frozen in (``build/micropython-frozen``), both stripped: a firmware that gains a frozen
  library;
- **two MicroPython versions**: the stock-firmware board on MicroPython 1.25.0
  (``build/micropython``) to the same board on 1.26.1 (``build/micropython-1.26``, built from
  Debian's source package), both stripped: a firmware upgrade across a MicroPython release.

For each: the patch (``jobsctl.delta.create``: detools sequential, heatshrink with the default
window/lookahead, and compression none) as a share of the new image; the time the device's
decoder (``bench/delta_apply.py``: iotjobs.delta.Patcher, base from ota_0, new image into ota_1
of the simulated flash) takes to apply it on the Unix port, min and median of RUNS runs; and
against that the time to download the full image or the patch at 1 Mbit/s and 64 kbit/s:
**arithmetic** (bytes x 8 / rate) on a simulated link, no board profile (the apply time is this
PC's; a board applies slower). The heap high-water is the live heap when the apply starts under
``heap_lock`` (nothing is allocated after that), with the library frozen in.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from jobsctl import delta, image
from jobsctl.checkout import BUILD, ROOT, unix_port
from jobsctl.device import device_env
from jobsctl.errors import JobsctlError

APPLY = ROOT / "bench" / "delta_apply.py"
LINKS = ((1_000_000, "1 Mbit/s"), (64_000, "64 kbit/s"))
ONE_LINE = ("ask for a new URL", "asking for a new URL", "asking for a fresh URL")

Row = tuple[str, str, str]


def _strip(src: Path, dst: Path) -> bytes:
    subprocess.run(["strip", "-o", str(dst), str(src)], check=True)
    return dst.read_bytes()


def one_line_pair(tmp: Path) -> tuple[bytes, bytes]:
    """The frozen port built from lib/ as is and with one line changed (stripped)."""
    tree = tmp / "tree"
    build = tree / "build"
    build.mkdir(parents=True)
    for name in ("firmware", "lib", "sim"):
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dl", "mbedtls-src", "upylib"):
        (build / name).symlink_to(BUILD / name)
    # The built sources and objects, so that each build only re-freezes and links.
    shutil.copytree(BUILD / "micropython-src", build / "micropython-src", symlinks=True)
    script = tree / "firmware" / "unix-port.sh"
    src = tree / "lib" / "iotjobs" / "fetch.py"
    out = []
    for i in range(2):
        if i:
            text = src.read_text()
            if text.count(ONE_LINE[1]) != 1:
                raise JobsctlError(f"bench: {ONE_LINE[1]!r} is not once in {src.name} any more")
            src.write_text(text.replace(ONE_LINE[1], ONE_LINE[2]))
        r = subprocess.run(
            ["bash", str(script), str(build), "frozen"], capture_output=True, text=True
        )
        if r.returncode:
            raise JobsctlError(f"bench: the frozen port did not build: {r.stderr.strip()}")
        out.append(_strip(build / "micropython-frozen", tmp / f"frozen-{i}.bin"))
    return out[0], out[1]


def _apply(board: Path, patch: Path, base: int, new: bytes, frozen: bool) -> list[str]:
    cmd = [str(unix_port(frozen)), "-X", "heapsize=256k", str(APPLY), str(patch)]
    r = subprocess.run(
        [*cmd, str(base), str(len(new))],
        cwd=board,
        env=device_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = r.stdout.split()
    if out[:1] != ["OK"] or out[2] != hashlib.sha256(new).hexdigest():
        raise JobsctlError(f"bench: the device did not rebuild the image: {r.stdout}{r.stderr}")
    return out


def _board(folder: Path, old: bytes) -> Path:
    folder.mkdir(parents=True)
    image.init_sim_flash(folder)
    with (folder / "flash" / "ota_0.bin").open("r+b") as f:
        f.write(old)
    return folder


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 100 else f"{seconds:.0f} s"


def pair_rows(tmp: Path, label: str, old: bytes, new: bytes, runs: int) -> list[Row]:
    if max(len(old), len(new)) > image.SLOT_SIZE:
        raise JobsctlError(f"bench: {label} does not fit an OTA slot")
    board = _board(tmp / "board", old)
    rows: list[Row] = []
    patches = {
        "heatshrink": delta.create(old, new, "heatshrink"),
        "none": delta.create(old, new, "none"),
    }
    files = {}
    for name, p in patches.items():
        files[name] = tmp / f"{name}.patch"
        files[name].write_bytes(p.data)
    ms: dict[str, list[int]] = {name: [] for name in patches}
    for _ in range(runs):  # interleaved
        for name in patches:
            ms[name].append(int(_apply(board, files[name], len(old), new, True)[1]))
    hs = patches["heatshrink"]
    share = len(hs.data) / len(new)
    rows.append(
        (
            f"delta patch, {label}",
            f"{len(hs.data):,} B = {share:.1%} of the {len(new):,} B image",
            f"heatshrink (window 2^{delta.WINDOW_BITS}, lookahead 2^{delta.LOOKAHEAD_BITS}); "
            f"compression none: {len(patches['none'].data):,} B "
            f"({len(patches['none'].data) / len(new):.1%}); base {len(old):,} B",
        )
    )
    for name in patches:
        t = ms[name]
        apply_s = min(t) / 1000
        link = []
        for bps, what in LINKS:
            full = len(new) * 8 / bps
            part = len(patches[name].data) * 8 / bps + apply_s
            link.append(f"{what}: patch + apply {_s(part)} vs full image {_s(full)}")
        rows.append(
            (
                f"delta apply ({name}), {label}",
                f"{min(t) / 1000:.2f} s min, {statistics.median(t) / 1000:.2f} s median",
                f"iotjobs.delta on the 32-bit Unix port (i386, this PC), {runs} runs; "
                + "; ".join(link)
                + " (link: arithmetic, bytes x 8 / rate)",
            )
        )
    frozen = _apply(board, files["heatshrink"], len(old), new, True)
    mpy = _apply(board, files["heatshrink"], len(old), new, False)
    rows.append(
        (
            f"delta apply heap high-water, {label}",
            f"{int(frozen[4]) / 1024:.1f} KB frozen",
            f"live heap when the apply starts under heap_lock, library frozen in; of it "
            f"{(int(frozen[4]) - int(frozen[3])) / 1024:.1f} KB the decoder's buffers "
            f"(4 KB block, 1 KB patch input, 0.5 KB decoded, 1 KB base, "
            f"{(1 << delta.WINDOW_BITS) / 1024:g} KB window); with the modules as .mpy files "
            f"(bytecode in the heap): {int(mpy[4]) / 1024:.1f} KB",
        )
    )
    shutil.rmtree(board)
    return rows


def run(tmp: Path, runs: int, rows: list[Row]) -> None:
    tmp.mkdir(parents=True, exist_ok=True)
    before, after = one_line_pair(tmp / "pair1")
    rows += pair_rows(
        tmp / "one-line",
        "frozen Unix port (stripped), one-line change in lib/",
        before,
        after,
        runs,
    )
    plain = _strip(unix_port(False), tmp / "plain.bin")
    frozen = _strip(unix_port(True), tmp / "frozen.bin")
    rows += pair_rows(
        tmp / "gain",
        "Unix port 1.25 (stripped) → the same with the agent frozen in",
        plain,
        frozen,
        runs,
    )
    newest = _strip(unix_port(newest=True), tmp / "newest.bin")
    rows += pair_rows(
        tmp / "versions",
        "Unix port MicroPython 1.25.0 → 1.26.1 (stripped, stock-firmware board)",
        plain,
        newest,
        runs,
    )


def main() -> int:
    from .table import table

    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="jobsctl-bench-delta-") as d:
            run(Path(d), 3, rows)
    except JobsctlError as exc:
        print(f"jobsctl bench: {exc}", file=sys.stderr)
        return 1
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
