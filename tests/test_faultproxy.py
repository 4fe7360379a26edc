"""The fault proxy cuts and stalls exactly where it is told to, and passes the rest through."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from harness.faultproxy import Fault, FaultProxy

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, position-dependent so truncation is visible


@pytest.fixture()
def source() -> Iterator[int]:
    """A TCP server that answers any request line with PAYLOAD and closes."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(100)
                with contextlib.suppress(OSError):
                    conn.sendall(PAYLOAD)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield server.getsockname()[1]
    stop.set()
    server.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
    server.close()
    t.join(timeout=5)


def fetch(port: int, timeout: float = 10) -> tuple[bytes, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET\n")
        got = bytearray()
        try:
            while chunk := s.recv(65536):
                got += chunk
        except TimeoutError:
            return bytes(got), "timeout"
        except ConnectionResetError:
            return bytes(got), "reset"
    return bytes(got), "eof"


def test_a_planned_cut_ends_the_connection_at_the_exact_byte_offset(source):
    with FaultProxy("127.0.0.1", source) as proxy:
        proxy.plan(Fault.cut(300_001))
        first, _ = fetch(proxy.port)
        second, how = fetch(proxy.port)
    assert first == PAYLOAD[:300_001]
    assert second == PAYLOAD and how == "eof"
    assert proxy.stats.connections == 2 and proxy.stats.cuts == 1


def test_a_planned_stall_forwards_nothing_after_the_offset(source):
    with FaultProxy("127.0.0.1", source) as proxy:
        proxy.plan(Fault.stall(4096, seconds=30))
        got, how = fetch(proxy.port, timeout=1.0)
    assert how == "timeout"
    assert got == PAYLOAD[:4096]
    assert proxy.stats.stalls == 1


def test_cut_all_drops_every_open_connection(source):
    with FaultProxy("127.0.0.1", source) as proxy:
        proxy.plan(Fault.stall(10, seconds=30))
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(b"GET\n")
            assert s.recv(10)
            proxy.cut_all()
            rest = b""
            try:
                while chunk := s.recv(65536):
                    rest += chunk
            except ConnectionResetError:
                pass
        assert len(rest) < len(PAYLOAD)
