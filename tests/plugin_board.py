"""Fixtures for real-hardware tooling: a simulated board on a pty (raw REPL, for mpremote).

``sim_board`` is a :class:`harness.rawrepl.RawReplBridge` on a fresh board folder; its
``port`` is the pty path to give mpremote or ``jobsctl deploy``. ``PtyConsole`` talks to the
port byte by byte for protocol-level tests.
"""

from __future__ import annotations

import os
import select
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.rawrepl import RawReplBridge


@pytest.fixture()
def sim_board(tmp_path: Path, board_port: Path) -> Iterator[RawReplBridge]:
    # build/micropython is the stock-firmware board: what official firmware has frozen in and
    # the simulated hardware modules are frozen into it, so `import machine` (mpremote reset)
    # behaves as on a board, and only what is deployed sits in the board's filesystem.
    board = tmp_path / "board"
    board.mkdir()
    bridge = RawReplBridge(board, micropython=board_port)
    bridge.start()
    try:
        yield bridge
    finally:
        bridge.stop()
    assert bridge.error is None, f"bridge failed: {bridge.error!r}"


class PtyConsole:
    """The host end of a serial line: write bytes, wait for an expected answer."""

    def __init__(self, port: str) -> None:
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        tty.setraw(self.fd)
        self.seen = b""

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def expect(self, ending: bytes, timeout: float = 10.0) -> bytes:
        """Read until ``ending`` appears; return everything up to and including it."""
        deadline = time.monotonic() + timeout
        while ending not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {ending!r} within {timeout} s; got {self.seen!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                self.seen += os.read(self.fd, 4096)
        end = self.seen.index(ending) + len(ending)
        out, self.seen = self.seen[:end], self.seen[end:]
        return out

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture()
def console(sim_board: RawReplBridge) -> Iterator[PtyConsole]:
    c = PtyConsole(sim_board.port)
    try:
        yield c
    finally:
        c.close()
