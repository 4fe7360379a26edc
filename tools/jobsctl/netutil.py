"""Loopback helpers shared by the servers the tools start."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def terminate(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 10) -> None:
    """Stop a server we started: SIGTERM, then SIGKILL if it has not gone within ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; callers retry if a server then fails to bind."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, alive: Callable[[], bool]) -> bool:
    """Wait until something accepts TCP connections on host:port (or ``alive()`` turns false)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)  # polling a port that is not open yet; not synchronisation of a test
    return False


def dies_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child SIGKILLed when its parent dies, however it dies
    (``kill -9`` too): Linux's PR_SET_PDEATHSIG. The signal comes when the *thread* that
    started the child ends, so start children from a thread that lives as long as they must
    (the stack's are started by the thread that starts the stack). None where there is no
    prctl (not Linux)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl: nothing to serve
            os._exit(1)

    return preexec


def reap_stale(pid_file: Path, marker: str, timeout: float = 10) -> None:
    """End the process ``pid_file`` names if it is still running and its command line holds
    ``marker`` (a child a killed stack left behind on this state dir); forget the file."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return
    if marker.encode() in cmdline.split(b"\0"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for a process exit that init reaps, not synchronisation
    pid_file.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def write_pid(pid_file: Path, pid: int) -> None:
    tmp = pid_file.with_name(pid_file.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, pid_file)


class LogPump:
    """Reads a child's stream on a thread, keeps recent lines, and lets callers wait for one."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        stream_name: str = "stderr",
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._echo = echo
        stream = getattr(proc, stream_name)
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            if self._echo:
                self._echo(line)
            with self._cond:
                self.lines.append(line)
                if len(self.lines) > 2000:
                    del self.lines[:1000]
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # EOF marker
            self._cond.notify_all()

    def wait_for(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if any(needle in line for line in self.lines):
                    return True
                if self.lines and self.lines[-1] == "" and not self._thread.is_alive():
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)

    def tail(self, n: int = 20) -> str:
        with self._cond:
            return "\n".join(self.lines[-n:])
