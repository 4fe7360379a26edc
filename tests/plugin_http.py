"""A real HTTPS server on loopback for the device's download client (tests/test_http.py).

``https_server`` serves ``server.objects[name]`` at ``/obj/<name>`` with Range support, plus
paths that misbehave the ways networks and servers do: redirects, 403/404, a stall after the
headers, a body cut short, a server that ignores Range, chunked encoding, a huge header line.
"""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from jobsctl.pki import CertificateAuthority


class _Handler(BaseHTTPRequestHandler):
    server: TestServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        path = self.path.split("?")[0]
        if path.startswith("/obj/") or path.startswith("/norange/"):
            data = srv.objects.get(path.split("/", 2)[2])
            if data is None:
                return self._send(404, b"<Error>NoSuchKey</Error>")
            rng = self.headers.get("Range")
            m = re.fullmatch(r"bytes=(\d+)-", rng or "")
            if m and path.startswith("/obj/"):
                first = int(m.group(1))
                if first >= len(data):
                    return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                cr = f"bytes {first}-{len(data) - 1}/{len(data)}"
                return self._send(206, data[first:], {"Content-Range": cr})
            return self._send(200, data)
        if path == "/redirect":
            return self._send(302, b"", {"Location": "/obj/" + self.path.split("=", 1)[1]})
        if path == "/redirect-abs":
            loc = srv.url("/obj/" + self.path.split("=", 1)[1])
            return self._send(301, b"", {"Location": loc})
        if path == "/loop":
            return self._send(302, b"", {"Location": "/loop"})
        if path == "/forbidden":
            return self._send(403, b"<Error>Request has expired</Error>")
        if path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            srv.release.wait(30)
            return
        if path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"x" * 5000)
            self.close_connection = True
            return
        if path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n0\r\n\r\n")
            return
        if path == "/longheader":
            return self._send(200, b"x", {"X-Big": "y" * 5000})
        self._send(404)


class TestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.scheme = "https" if context else "http"
        if context:
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.release = threading.Event()

    def url(self, path: str) -> str:
        return f"{self.scheme}://localhost:{self.server_port}{path}"


def _serve(
    ca: CertificateAuthority | None, folder: Path, host: str = "localhost"
) -> Iterator[TestServer]:
    ctx = None
    if ca is not None:
        if host == "localhost":
            creds = ca.issue_server(folder)
        else:  # a certificate that names only another host
            creds = ca.issue(host, folder, server=True, dns_names=(host,))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(creds.cert, creds.key)
    srv = TestServer(ctx)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


@pytest.fixture()
def https_server(ca: CertificateAuthority, tmp_path: Path) -> Iterator[TestServer]:
    yield from _serve(ca, tmp_path / "https")


@pytest.fixture()
def foreign_https_server(other_ca: CertificateAuthority, tmp_path: Path) -> Iterator[TestServer]:
    """The same server with a certificate from a CA the device does not trust."""
    yield from _serve(other_ca, tmp_path / "https-foreign")


@pytest.fixture()
def misnamed_https_server(ca: CertificateAuthority, tmp_path: Path) -> Iterator[TestServer]:
    """A trusted CA, but the certificate names s3.example.com, not the host dialled."""
    yield from _serve(ca, tmp_path / "https-misnamed", host="s3.example.com")


@pytest.fixture()
def http_server(tmp_path: Path) -> Iterator[TestServer]:
    """The same server in plain http, for devices configured with ota_allow_http."""
    yield from _serve(None, tmp_path / "http")
