# OTA download over AWS IoT MQTT-based file delivery (streams), through the agent's own MQTT
# session: no second TLS session. Imported only when a job downloads this way (a full image:
# either/download/fetch; a delta patch: Blocks, the decoder's byte source).
#
# The device asks for _WINDOW blocks of 4096 bytes at a time on
#   $aws/things/THING/streams/STREAM/get/F        {"f": file, "l": 4096, "o": first, "n": count}
# and the service answers one message per block on .../data/F {"f", "l", "i", "p"} (F = json:
# p in base64; F = cbor: p as bytes) or an error on .../rejected/F {"o": code, "m": message}.
#
# Memory: while a window is in flight this module reads the MQTT packets off the TLS socket
# itself (non-blocking, through one 512-byte buffer and a reused poll object) and decodes the
# payload straight into the block buffer, so that a block allocates nothing (umqtt.simple would
# read each message whole into a new bytes object). It never reads past the end of a packet, so
# that the socket is always at a packet boundary when umqtt.simple reads from it again. What
# is not a data block of ours (a Jobs notify, a rejection) is read whole and handed to the agent,
# as umqtt.simple would have. Between windows (what allocates: the request's publish, the
# agent's MQTT poll, checkpoints and progress reports) the socket is blocking again.

import asyncio
import time

from iotjobs.agent import Failed
from micropython import const

_BLOCK = const(4096)
_WINDOW = const(16)  # blocks per request
_RX = const(512)
_TOPIC_MAX = const(320)
_SAVE_EVERY = const(16)
_ETIMEDOUT = const(110)
_ENOTCONN = const(107)
_EPROTO = const(71)
_POLLIN = const(1)
_POLL_BAD = const(0x18)

# base64 alphabet -> 6-bit value; 0xFE for '=' and '\' (JSON may escape '/' as '\/'), 0xFF bad.
_B64 = bytearray(b"\xff" * 256)
for _i, _c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"):
    _B64[_c] = _i
_B64[0x3D] = 0xFE
_B64[0x5C] = 0xFE
del _i, _c


class _Reader:
    # One MQTT packet at a time from the non-blocking TLS socket, never past its end. Bytes
    # read here count as traffic for the transport's keepalive (t.seen()), as if
    # umqtt.simple had read them: a PINGRESP consumed here still answers the ping.
    def __init__(self, t, sock, timeout_ms):
        import select

        self.g = t
        self.s = sock
        self.t = timeout_ms
        self.rx = bytearray(_RX)
        self.i = 0  # next unread byte in rx
        self.n = 0  # bytes in rx
        self.left = 0  # bytes of the current packet not yet consumed (from rx or the socket)
        self.back = -1  # one byte pushed back by the JSON scanner
        self.p = select.poll()
        self.p.register(sock, _POLLIN)
        for _ in self.p.ipoll(0):  # the first ipoll() allocates the tuple it reuses after
            pass
        self.since = None  # ticks since when ready() has found nothing

    def ready(self):
        # Between two packets, with the socket non-blocking: whether the next packet's first
        # byte is here (read into rx now if it came: a packet has at least two, so this never
        # reads past it); OSError(ETIMEDOUT) once nothing came for timeout_ms. Allocates
        # nothing. (A read rather than a poll: the Unix port polls a TLS socket with a 1 ms
        # sleep.)
        if self.i < self.n or self.back >= 0:
            return True
        n = self.s.readinto(self.rx, 1)
        if n:
            self.i = 0
            self.n = n
            self.g.seen()
            self.since = None
            return True
        if n == 0:
            raise OSError(_ENOTCONN)  # closed
        now = time.ticks_ms()
        if self.since is None:
            self.since = now
        elif time.ticks_diff(now, self.since) > self.t:
            raise OSError(_ETIMEDOUT)
        return False

    def _fill(self, k):
        # Reads 1..k bytes (k <= bytes left in the packet) into rx; waits up to timeout.
        if k > _RX:
            k = _RX
        while True:
            n = self.s.readinto(self.rx, k)
            if n:
                self.i = 0
                self.n = n
                self.g.seen()
                return
            if n == 0:
                raise OSError(_ENOTCONN)  # closed
            ev = 0
            for _, ev in self.p.ipoll(self.t):
                pass
            if not ev:
                raise OSError(_ETIMEDOUT)
            if ev & _POLL_BAD and not ev & _POLLIN:
                raise OSError(_ENOTCONN)

    def byte(self):
        b = self.back
        if b >= 0:
            self.back = -1
            return b
        if self.i >= self.n:
            self._fill(self.left if self.left > 0 else 1)
        b = self.rx[self.i]
        self.i += 1
        self.left -= 1
        return b

    def skip(self):
        # Drops the rest of the packet.
        while self.left > 0:
            if self.i >= self.n:
                self._fill(self.left)
            k = self.n - self.i
            if k > self.left:
                k = self.left
            self.i += k
            self.left -= k

    def header(self):
        # -> the first byte of the next packet; self.left = its remaining length.
        self.left = 1
        self.back = -1
        b0 = self.byte()
        n = 0
        shift = 0
        while True:
            self.left = 1
            b = self.byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                raise OSError(_EPROTO)
        self.left = n
        return b0

    def into(self, buf, k):
        # Copies the next k bytes of the packet into buf[0:k] (k <= len(buf)).
        for j in range(k):
            buf[j] = self.byte()


class Session:
    # The stream download of one job: topics, buffers, the socket while a window is in flight.
    def __init__(self, ctx, job, bl=_BLOCK):
        name = job["stream"]
        fmt = "cbor" if ctx.config.get("ota_stream_format") == "cbor" else "json"
        base = "$aws/things/%s/streams/%s/" % (ctx.config["thing_name"], name)
        self.ctx = ctx
        self.fid = job["fileid"]
        self.bl = bl  # the block length asked for (the slot's 4096; a delta patch's 1024)
        self.cbor = fmt == "cbor"
        self.get = (base + "get/" + fmt).encode()
        self.data = (base + "data/" + fmt).encode()
        self.rej = (base + "rejected/" + fmt).encode()
        self.topic = bytearray(_TOPIC_MAX)
        self.tlen = 0
        self.connects = -1
        self.r = None  # the packet reader of the current connection
        self.blocks = 0  # blocks received (for the log and the bench)
        self.requests = 0
        self._len = 0  # every attribute exists before the heap is locked
        self.off = 0  # bytes written and hashed so far: what a failed window leaves behind

    def ready(self):
        # The transport when link() would have nothing to do (allocates nothing), else None.
        link = self.ctx.link
        t = link.t
        if t is None or link.connects != self.connects or self.r is None or self.r.s is not t.raw():
            return None
        return t

    async def link(self):
        # The connected transport, subscribed to the stream's topics (again after a reconnect),
        # and the packet reader over its TLS socket.
        link = self.ctx.link
        t = await link.ensure()
        if link.connects != self.connects:
            t.subscribe(self.data)
            t.subscribe(self.rej)
            self.connects = link.connects
        sock = t.raw()
        if self.r is None or self.r.s is not sock:
            self.r = _Reader(t, sock, self.ctx.config["timeout_ms"])
        return t

    def _request(self, t, first, n):
        # One PUBLISH (QoS 0) written in one piece: umqtt.simple writes a packet in four small
        # writes, and TCP's Nagle + delayed ACK then cost ~40 ms per request (REFERENCE 5).
        fid = self.fid
        if self.cbor:
            msg = (
                b"\xa4af"
                + _cbor_uint(fid)
                + b"al"
                + _cbor_uint(self.bl)
                + b"ao"
                + _cbor_uint(first)
            ) + (b"an" + _cbor_uint(n))
        else:
            msg = b'{"f":%d,"l":%d,"o":%d,"n":%d}' % (fid, self.bl, first, n)
        topic = self.get
        size = 2 + len(topic) + len(msg)
        head = bytearray(b"\x30")
        while True:
            b = size & 0x7F
            size >>= 7
            head.append(b | 0x80 if size else b)
            if not size:
                break
        t.send(bytes(head) + len(topic).to_bytes(2, "big") + topic + msg)
        self.requests += 1

    async def window(self, t, off, size, buf, slot, h, tail):
        # Asks for the next blocks from off and writes those that come, in order, into the slot.
        # -> the new offset (a gap or a late answer ends the window early: ask again from there).
        first = off // _BLOCK
        last = (size + _BLOCK - 1) // _BLOCK
        n = last - first
        if n > _WINDOW:
            n = _WINDOW
        self._request(t, first, n)
        r = self.r
        if r is None:
            raise OSError(_ENOTCONN)
        sock = r.s
        st = self.ctx.state
        board = self.ctx.board
        sock.setblocking(False)
        try:
            end = first + n - 1  # the window's last block
            while off < size:
                while not r.ready():  # waiting for the broker yields to the loop
                    await self.ctx.io_wait()
                i = self._packet(t, r, buf)
                if i < 0:
                    continue  # not a block of ours
                if i != off // _BLOCK:
                    # A late duplicate, or one after a block that never came: skip it; once
                    # the window's last block has passed, ask again from the missing one.
                    if i >= end:
                        break
                    continue
                want = size - off
                if want > _BLOCK:
                    want = _BLOCK
                if self._len != want:
                    raise Failed("stream block %d has %d bytes, expected %d" % (i, self._len, want))
                if want < _BLOCK:
                    for j in range(want, _BLOCK):
                        buf[j] = 0xFF
                    h.update(tail)
                else:
                    h.update(buf)
                slot.writeblocks(i, buf)
                off += want
                self.off = off
                self.blocks += 1
                board.feed()
                if (i + 1) % _SAVE_EVERY == 0 and off < size:
                    st["off"] = off
                    sock.setblocking(True)
                    self.ctx.save()
                    sock.setblocking(False)
                if i >= end:
                    break
                await asyncio.sleep_ms(0)  # between two blocks: the application runs
        finally:
            sock.setblocking(True)
        return off

    def _packet(self, t, r, buf):
        # Reads one packet: -> the block index of a data block of ours now in buf, else -1.
        b0 = r.header()
        if b0 & 0xF0 != 0x30:  # not a PUBLISH (PINGRESP, SUBACK...): nothing for us
            r.skip()
            return -1
        tl = r.byte() << 8
        tl |= r.byte()
        if b0 & 6:  # QoS > 0 (we subscribe at QoS 0): the packet id follows the topic
            raise OSError(_EPROTO)
        if tl > _TOPIC_MAX:
            r.skip()
            return -1
        top = self.topic
        r.into(top, tl)
        self.tlen = tl
        if _same(top, tl, self.data):
            return self._block_cbor(r, buf) if self.cbor else self._block_json(r, buf)
        topic = bytes(memoryview(top)[:tl])
        n = r.left
        try:
            msg = bytearray(n) if t.fits(n) else None  # rare: whole, as umqtt.simple would
        except MemoryError:
            msg = None
        if msg is None:  # what the transport drains unread: drained here, told as such
            r.skip()
            t.deliver(topic, b"", n)
            return -1
        r.into(msg, n)
        if topic == self.rej:
            code, text = _error(bytes(msg), self.cbor)
            raise Failed("stream %s: %s %s" % ("rejected", code, text))
        t.deliver(topic, bytes(msg))  # the agent's own messages (notify-next...)
        return -1

    def _block_json(self, r, buf):
        # {"f":0,"l":4096,"i":3,"p":"<base64>"} in any key order, any other keys skipped.
        f = i = ln = -1
        pos = -1
        c = _skip_ws(r)
        if c != 0x7B:
            raise Failed("stream data is not a JSON object")
        while r.left > 0 or r.back >= 0:
            c = _skip_ws(r)
            if c == 0x7D:  # }
                break
            if c == 0x2C:  # ,
                continue
            if c != 0x22:
                raise Failed("stream data: bad JSON")
            k = r.byte()
            klen = 1
            while r.byte() != 0x22:
                klen += 1
            if _skip_ws(r) != 0x3A:  # :
                raise Failed("stream data: bad JSON")
            c = _skip_ws(r)
            if c == 0x22:
                if k == 0x70 and klen == 1:  # "p"
                    pos = _b64(r, buf)
                else:
                    _skip_str(r)
            elif 0x30 <= c <= 0x39:
                v = c - 0x30
                while True:
                    c = r.byte()
                    if not 0x30 <= c <= 0x39:
                        r.back = c
                        break
                    v = v * 10 + c - 0x30
                    if v > 0x3FFFFFFF:
                        raise Failed("stream data: number too large")
                if klen == 1:
                    if k == 0x66:
                        f = v
                    elif k == 0x69:
                        i = v
                    elif k == 0x6C:
                        ln = v
            else:  # true, false, null, negative numbers: skip the scalar
                while c not in (0x2C, 0x7D):
                    c = r.byte()
                r.back = c
        r.back = -1
        r.skip()
        return self._check(f, i, ln, pos)

    def _block_cbor(self, r, buf):
        # A CBOR map of one-letter text keys to unsigned ints, text (c) and bytes (p).
        f = i = ln = -1
        pos = -1
        b = r.byte()
        if b & 0xE0 != 0xA0:
            raise Failed("stream data is not a CBOR map")
        items = _cbor_arg(r, b)
        for _ in range(items):
            b = r.byte()
            if b & 0xE0 != 0x60:
                raise Failed("stream data: CBOR key is not text")
            klen = _cbor_arg(r, b)
            k = r.byte() if klen else 0
            for _ in range(klen - 1):
                r.byte()
            b = r.byte()
            major = b & 0xE0
            v = _cbor_arg(r, b)
            if major == 0:
                if klen == 1:
                    if k == 0x66:
                        f = v
                    elif k == 0x69:
                        i = v
                    elif k == 0x6C:
                        ln = v
            elif major == 0x40 and k == 0x70 and klen == 1:
                if v > len(buf):
                    raise Failed("stream block of %d bytes is larger than a block" % v)
                r.into(buf, v)
                pos = v
            elif major in (0x40, 0x60):
                for _ in range(v):
                    r.byte()
            else:
                raise Failed("stream data: unexpected CBOR type")
        r.skip()
        return self._check(f, i, ln, pos)

    def _check(self, f, i, ln, pos):
        if f != self.fid or i < 0 or pos < 0 or ln != pos:
            raise Failed("stream data block malformed (file %d, block %d)" % (f, i))
        self._len = ln
        return i


class Blocks:
    # A stream file as the byte source of iotjobs.delta.Patcher: its reads of bl bytes (the
    # last one shorter) from a multiple of bl are one block each, decoded straight into the
    # reader's buffer (whole, bl bytes; a read's buf is whole or its first n bytes): no buffer
    # of its own, nothing allocated per block. A read waits for its
    # block on the socket (with the connection's timeout, as an HTTPS read does); the next
    # window of blocks is asked for when the last one asked for has been taken.
    def __init__(self, s, size, off, whole):
        self.s = s
        self.whole = whole  # the reader's whole buffer (bl bytes): what any block decodes into
        self.nxt = off // s.bl  # the next block to take
        self.end = -1  # the last block asked for
        self.last = (size + s.bl - 1) // s.bl - 1

    def readinto(self, buf, n):
        s = self.s
        t = s.ready()
        if t is None:  # the connection changed: the caller goes on from its checkpoint
            raise OSError(_ENOTCONN)
        i = self.nxt
        if i > self.end:
            self._ask(t, i)
        r = s.r
        sock = r.s
        sock.setblocking(False)
        try:
            while True:
                # Into the whole buffer (buf may be its first n bytes, for the last block): a
                # late block of another window fits too. Waits for a packet up to timeout_ms.
                j = s._packet(t, r, self.whole)
                if j == i:
                    break
                if j >= self.end:  # the window passed without block i: ask again from it
                    sock.setblocking(True)
                    self._ask(t, i)
                    sock.setblocking(False)
        finally:
            sock.setblocking(True)
        if s._len != n:
            raise Failed("stream block %d has %d bytes, expected %d" % (i, s._len, n))
        self.nxt = i + 1
        s.blocks += 1
        s.ctx.board.feed()
        return n

    def _ask(self, t, i):
        n = self.last - i + 1
        if n > _WINDOW:
            n = _WINDOW
        self.s._request(t, i, n)
        self.end = i + n - 1

    def busy(self):
        # Whether blocks asked for are still to come: then the patcher neither reports progress
        # nor lets the agent read MQTT (both would take them off the socket), it only yields.
        return self.nxt <= self.end

    def pause(self, ctx):
        ctx.board.feed()
        return asyncio.sleep_ms(0)

    def close(self):
        pass


async def either(ctx, job, slot, h, buf, tail, off, reparse):
    # A job with a stream (and maybe a URL): the device config's ota_protocol first ("mqtt"
    # unless it says "http"), the other once if that fails, from the last persisted block.
    # -> (size, hash).
    from iotjobs.fetch import rehash, to_slot

    st = ctx.state
    order = ("HTTP", "MQTT") if ctx.config.get("ota_protocol") == "http" else ("MQTT", "HTTP")
    protos = [p for p in order if p == "MQTT" or job["url"] is not None]
    if st.get("proto") not in protos:
        st["proto"] = protos[0]  # persisted: a reset continues with the same protocol
    while True:
        try:
            if st["proto"] == "MQTT":
                return await download(ctx, job, slot, h, buf, tail, off, job["size"]), h
            return await to_slot(ctx, job, slot, h, buf, tail, off, reparse)
        except (Failed, OSError) as e:
            other = [p for p in protos if p != st["proto"]]
            if not other or st.get("fell"):
                raise
            ctx.log("%s download failed (%s), falling back to %s" % (st["proto"], e, other[0]))
            st["proto"] = other[0]
            st["fell"] = True
            ctx.save()
            off = st["off"]
            h = await rehash(slot, buf, off)


async def download(ctx, job, slot, h, buf, tail, off, size):
    # The whole file from off (a multiple of 4096) into the slot, hashing as it goes; -> size.
    # Raises Failed (the caller may fall back to HTTP), Canceled, or Failed after too many
    # network failures in a row.
    # The one TLS session: MQTT stays open for the whole download (never ctx.tls_open()).
    # After an HTTPS attempt closed it (a fallback), connect and check in first.
    await ctx.checkin({"step": "download", "progress": "%d/%d" % (off, size)})
    s = Session(ctx, job)
    if off:
        ctx.log("resuming download at %d of %d" % (off, size))
    off = await fetch(ctx, s, slot, h, buf, tail, off, size)
    ctx.log("stream: %d blocks in %d requests" % (s.blocks, s.requests))
    return off


async def fetch(ctx, s, slot, h, buf, tail, off, size):
    # The loop (bench/ota_mqtt_pipeline.py runs it under heap_lock): a window at a time.
    fails = 0
    s.off = off
    while off < size:
        await ctx.tick()  # between windows: the agent reads MQTT, a cancel is noticed here
        try:
            t = s.ready()
            if t is None:
                t = await s.link()
            await s.window(t, off, size, buf, slot, h, tail)
        except OSError as e:
            from iotjobs.fetch import net_fail

            if s.off > off:
                fails = 0
            off = s.off  # the blocks of the window that did arrive are written and hashed
            ctx.link.drop(e)
            fails = await net_fail(ctx, fails, e)
            continue
        if s.off > off:
            fails = 0
        off = s.off
        if ctx.progress_due():
            await ctx.progress({"step": "download", "progress": "%d/%d" % (off, size)}, True)
    return off


def _same(top, tl, want):
    if tl != len(want):
        return False
    for j in range(tl):
        if top[j] != want[j]:
            return False
    return True


def _skip_ws(r):
    c = r.byte()
    while c in (0x20, 0x0A, 0x0D, 0x09):
        c = r.byte()
    return c


def _skip_str(r):
    while True:
        c = r.byte()
        if c == 0x22:
            return
        if c == 0x5C:
            r.byte()


def _b64(r, buf):
    # Decodes a JSON string of base64 (opening quote read) into buf; -> the number of bytes.
    tbl = _B64
    acc = 0
    bits = 0
    pos = 0
    while True:
        if r.i >= r.n:
            if r.left <= 0:
                raise Failed("stream data: unterminated string")
            r._fill(r.left)
        rx = r.rx
        j = r.i
        n = r.n
        while j < n:
            c = rx[j]
            j += 1
            if c == 0x22:
                r.left -= j - r.i
                r.i = j
                return pos
            v = tbl[c]
            if v < 64:
                acc = ((acc << 6) | v) & 0xFFFFFF
                bits += 6
                if bits >= 8:
                    bits -= 8
                    if pos >= len(buf):
                        raise Failed("stream block larger than a block")
                    buf[pos] = (acc >> bits) & 0xFF
                    pos += 1
            elif v == 0xFF:
                raise Failed("stream data: bad base64")
        r.left -= j - r.i
        r.i = j


def _cbor_arg(r, b):
    # The argument of a CBOR head byte b (length, count or value), up to 32 bits.
    a = b & 0x1F
    if a < 24:
        return a
    if a > 26:
        raise Failed("stream data: CBOR value too large")
    n = 1 << (a - 24)
    v = 0
    for _ in range(n):
        v = (v << 8) | r.byte()
    if v > 0x3FFFFFFF:
        raise Failed("stream data: CBOR value too large")
    return v


def _cbor_uint(v):
    if v < 24:
        return bytes((v,))
    if v < 0x100:
        return bytes((0x18, v))
    if v < 0x10000:
        return bytes((0x19, v >> 8, v & 0xFF))
    return bytes((0x1A, v >> 24, (v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF))


def _error(msg, cbor):
    # (code, message) of a rejected/F message.
    if not cbor:
        import json

        try:
            d = json.loads(msg)
            return str(d.get("o")), str(d.get("m"))
        except (ValueError, AttributeError):
            return "?", ""
    out = ["?", ""]
    try:
        # A flat map of text keys to text values (and a token): find "o" and "m".
        j = 1
        for _ in range(msg[0] & 0x1F):
            kl = msg[j] & 0x1F
            key = msg[j + 1 : j + 1 + kl]
            j += 1 + kl
            vl = msg[j] & 0x1F
            j += 1
            if vl == 24:
                vl = msg[j]
                j += 1
            val = msg[j : j + vl]
            j += vl
            if key == b"o":
                out[0] = val.decode()
            elif key == b"m":
                out[1] = val.decode()
    except (IndexError, UnicodeError):
        pass
    return out[0], out[1]
