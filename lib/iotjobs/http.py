# Streaming HTTP(S) GET for OTA payloads (pre-signed S3 URLs): Range to resume, redirects,
# Content-Length/Content-Range checks, timeouts on every step, TLS with CA and hostname checks.
#
# r = http.open(url, start, cadata)      # Response: status, start, length, total
# n = r.readinto(buf)                    # fills buf (or buf[:nbytes]) completely, or up to the
#                                        # end of the body; 0 at the end
# r.ready()                              # whether bytes are there now (never blocks): a caller
#                                        # under asyncio yields until they are
# r.close()
#
# Why readinto fills whole buffers: a stream's readinto(buf, nbytes) always writes at buf[0],
# so a short read could only be continued through a memoryview slice, which allocates. A
# blocking read with a socket timeout returns short only at a stall or a close; both are errors
# here (OSError), and the caller resumes with a Range request.
import io
import time

from micropython import const

_LINE_MAX = const(1024)
_HEADERS_MAX = const(64)
_ETIMEDOUT = const(110)
_EAGAIN = const(11)
_EIO = const(5)


class HTTPError(Exception):
    def __init__(self, status, reason=""):
        super().__init__(status, reason)
        self.status = status


def parse_url(url):
    # -> (scheme, host, port, path); ValueError for anything but http(s)://host[:port]/path.
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    host, colon, port = host.partition(":")
    try:
        port = int(port) if colon else 443 if scheme == "https" else 80
    except ValueError:
        port = 0
    if (
        not sep
        or scheme not in ("http", "https")
        or not host
        or not 0 < port < 65536
        or any(c in url for c in " \r\n@[")
    ):
        raise ValueError("unsupported URL (http(s)://host[:port]/path only)")
    return scheme, host, port, slash + path or "/"


class Response(io.IOBase):
    # An io.IOBase so that firmware streams (deflate.DeflateIO) can read from it.
    def __init__(self, sock, status, start, length, total, timeout_ms=15000, raw=None):
        self._s = sock
        self.status = status
        self.start = start
        self.length = length
        self.total = total
        self._left = length
        self._t = timeout_ms
        self._since = None  # ticks since when ready() has found nothing
        # The socket under TLS (an fd: polled at once on every port) first, then the TLS
        # socket itself for bytes it has decrypted already (the Unix port polls such an
        # object with a 1 ms sleep, ESP32 does not).
        self._r = _poller(raw or sock)
        self._p = _poller(sock) if raw is not None and raw is not sock else None

    def ready(self):
        # Whether a read would find bytes now (TLS: decrypted ones count); OSError(ETIMEDOUT)
        # once nothing came for timeout_ms, as a blocking read would. Allocates nothing.
        for _ in self._r.ipoll(0):
            self._since = None
            return True
        p = self._p
        if p is not None:
            for _ in p.ipoll(0):
                self._since = None
                return True
        now = time.ticks_ms()
        if self._since is None:
            self._since = now
        elif time.ticks_diff(now, self._since) > self._t:
            raise OSError(_ETIMEDOUT)
        return False

    def readinto(self, buf, nbytes=0):
        want = nbytes or len(buf)
        if want > self._left:
            want = self._left
        if not want:
            return 0
        try:
            n = self._s.readinto(buf, want)
        except OSError as e:
            if e.args[0] == _EAGAIN:  # SO_RCVTIMEO expired: nothing came for timeout_ms
                raise OSError(_ETIMEDOUT)
            raise
        if n is None or n < want:
            # None: the timeout expired (EAGAIN, possibly after part of the bytes); 0 or a
            # short count: end of stream.
            raise OSError(_ETIMEDOUT if n is None else _EIO)
        self._left -= n
        return n

    def close(self):
        s, self._s = self._s, None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass


def _poller(s):
    import select

    p = select.poll()
    p.register(s, 1)  # POLLIN
    for _ in p.ipoll(0):  # the first ipoll() allocates the tuple it reuses after
        pass
    return p


def open(url, start=0, cadata=None, timeout_ms=15000, allow_http=False):
    for _ in range(5):  # the request and up to 4 redirects
        scheme, host, port, path = parse_url(url)
        if scheme == "http" and not allow_http:
            raise ValueError("plain http refused (set ota_allow_http to allow it)")
        if scheme == "https" and not cadata:
            raise ValueError("https needs the server's CA (cadata); never unverified")
        s, raw = _connect(scheme, host, port, cadata, timeout_ms)
        try:
            status, hdr = _request(s, host, port, scheme, path, start)
            url = hdr.get("location")
            if status in (301, 302, 303, 307, 308) and url:
                if url[0] == "/":
                    url = "%s://%s:%d%s" % (scheme, host, port, url)
                s.close()
                continue
            if status not in (200, 206):
                raise HTTPError(status)
            if "chunked" in hdr.get("transfer-encoding", ""):
                raise HTTPError(status, "chunked transfer encoding is not supported")
            try:
                length = int(hdr["content-length"])
                if status == 206:
                    # "bytes 100-199/1000": the body starts where we asked
                    unit, _, rng = hdr["content-range"].partition(" ")
                    span, _, total = rng.partition("/")
                    if unit != "bytes" or int(span.partition("-")[0]) != start:
                        raise ValueError
                    return Response(s, status, start, length, int(total), timeout_ms, raw)
            except (KeyError, ValueError):
                raise HTTPError(status, "bad Content-Length or Content-Range")
            # 200: the server ignored the Range header; the body is the whole object: read and
            # drop the first bytes through a small buffer.
            if start > length:
                raise HTTPError(416, "offset beyond the object")
            n = start
            buf = bytearray(512)
            while n:
                k = s.readinto(buf, min(n, 512))
                if not k:
                    raise OSError(_EIO)
                n -= k
            return Response(s, status, start, length - start, length, timeout_ms, raw)
        except BaseException:
            s.close()
            raise
    raise HTTPError(310, "too many redirects")


def _connect(scheme, host, port, cadata, timeout_ms):
    import socket

    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = raw = socket.socket(ai[0], socket.SOCK_STREAM, ai[2])
    try:
        # A timeout on the socket bounds connect, the TLS handshake and every read: no call
        # here can block forever.
        s.settimeout(timeout_ms / 1000)
        s.connect(ai[-1])
        if scheme == "https":
            # A context per connection (as the firmware's ssl does for MQTT): nothing of it
            # (the parsed CA) stays in the IDF heap between sessions.
            import tls

            ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
            ctx.verify_mode = tls.CERT_REQUIRED  # type: ignore[attr-defined]  # stub lags firmware
            ctx.load_verify_locations(cadata)
            s = ctx.wrap_socket(s, server_hostname=host)
    except BaseException:
        s.close()
        raise
    return s, raw


def _request(s, host, port, scheme, path, start):
    default = 443 if scheme == "https" else 80
    h = host if port == default else "%s:%d" % (host, port)
    req = "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: iotjobs\r\nConnection: close\r\n" % (path, h)
    if start:
        req += "Range: bytes=%d-\r\n" % start
    s.write(req.encode() + b"\r\n")
    line = _line(s)
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise OSError(_EIO)
    try:
        status = int(parts[1])
    except ValueError:
        raise OSError(_EIO)
    hdr = {}  # type: dict
    for _ in range(_HEADERS_MAX):
        line = _line(s)
        if line in (b"\r\n", b"\n"):
            return status, hdr
        k, sep, v = line.partition(b":")
        if sep:
            hdr[k.strip().lower().decode()] = v.strip().decode()
    raise HTTPError(status, "too many headers")


def _line(s):
    try:
        line = s.readline(_LINE_MAX)
    except OSError as e:
        raise OSError(_ETIMEDOUT) if e.args[0] == _EAGAIN else e
    if not line:
        raise OSError(_EIO)  # closed before the headers ended
    if not line.endswith(b"\n"):
        raise HTTPError(0, "header line longer than %d bytes" % _LINE_MAX)
    return line
