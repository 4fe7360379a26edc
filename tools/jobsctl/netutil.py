"""Loopback helpers shared by the servers the tools start."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import IO


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
