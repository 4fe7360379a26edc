"""A TCP proxy on loopback that cuts or stalls connections on purpose.

It sits between a device and a server (object store or broker) and forwards bytes unchanged,
so TLS passes through end to end and the device still checks the real server's certificate.
Faults are planned per connection: the n-th connection accepted takes the n-th planned fault
(later ones pass clean), e.g. "cut the first download after 300,000 bytes from the server".

    with FaultProxy("127.0.0.1", s3_port) as proxy:
        proxy.plan(Fault.cut(300_000), Fault.stall(10_000, seconds=30))
        ... device downloads through https://localhost:{proxy.port}/...
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Fault:
    """What happens to one connection once ``after`` bytes went from the server to the client."""

    kind: str  # "cut" (close both sides), "stall" (forward nothing for `seconds`), or "none"
    after: int = 0
    seconds: float = 0.0

    @staticmethod
    def cut(after: int) -> Fault:
        return Fault("cut", after)

    @staticmethod
    def stall(after: int, seconds: float) -> Fault:
        return Fault("stall", after, seconds)

    @staticmethod
    def none() -> Fault:
        return Fault("none")


@dataclass
class ProxyStats:
    connections: int = 0
    cuts: int = 0
    stalls: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    per_connection_down: list[int] = field(default_factory=list)


class FaultProxy:
    """Forwards ``127.0.0.1:port`` to ``target``; ``plan()`` the faults of the next connections."""

    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", listen_port))
        self.port: int = self._listener.getsockname()[1]
        self._plan: list[Fault] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self.stats = ProxyStats()
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)

    def plan(self, *faults: Fault) -> None:
        """Faults for the next connections, in order of acceptance."""
        with self._lock:
            self._plan.extend(faults)

    def start(self) -> FaultProxy:
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        _close(self._listener)  # shutdown() is what wakes a thread blocked in accept()
        with self._lock:
            for s in list(self._open):
                _close(s)
        for t in self._threads:
            t.join(timeout=5)
        self._accept_thread.join(timeout=5)

    def cut_all(self) -> None:
        """Close every open connection now (a network drop)."""
        with self._lock:
            for s in list(self._open):
                _close(s)
            self.stats.cuts += 1

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                fault = self._plan.pop(0) if self._plan else Fault.none()
                self.stats.connections += 1
                index = len(self.stats.per_connection_down)
                self.stats.per_connection_down.append(0)
            t = threading.Thread(target=self._pipe, args=(client, fault, index), daemon=True)
            self._threads.append(t)
            t.start()

    def _pipe(self, client: socket.socket, fault: Fault, index: int) -> None:
        try:
            server = socket.create_connection(self.target, timeout=10)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._open.update((client, server))
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, server)
        sel.register(server, selectors.EVENT_READ, client)
        down = 0
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.2):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    data = src.recv(65536)
                    if not data:
                        return
                    if src is server and fault.kind != "none":
                        room = fault.after - down
                        if len(data) >= room:
                            if room > 0:
                                dst.sendall(data[:room])
                                self._count(index, room)
                            self._apply(fault)
                            if fault.kind == "cut":
                                return
                            fault, data = Fault.none(), data[room:]
                            if not data:
                                continue
                    dst.sendall(data)
                    if src is server:
                        down += len(data)
                        self._count(index, len(data))
                    else:
                        with self._lock:
                            self.stats.bytes_up += len(data)
        except OSError:
            return
        finally:
            sel.close()
            with self._lock:
                self._open.discard(client)
                self._open.discard(server)
            _close(client)
            _close(server)

    def _count(self, index: int, n: int) -> None:
        with self._lock:
            self.stats.bytes_down += n
            self.stats.per_connection_down[index] += n

    def _apply(self, fault: Fault) -> None:
        with self._lock:
            if fault.kind == "cut":
                self.stats.cuts += 1
            else:
                self.stats.stalls += 1
        if fault.kind == "stall":
            # The stall itself is the fault being injected, not synchronisation.
            self._stop.wait(fault.seconds)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()
