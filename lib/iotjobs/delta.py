# Delta OTA: rebuild the new image in the next slot from the running image (the base) and a
# detools "sequential" patch, while the patch streams in. Imported only by a delta job.
#
# Document (inside the native OTA document, whose size/sha256/signature/version stay the new
# image's; "url" is optional there and, when present, is the full image to fall back to):
#   "delta": {"url": "<patch>", "size": <patch bytes>, "sha256": "<patch>",
#             "base_size": <bytes>, "base_sha256": "<the running image's first base_size bytes>"}
# The patch may come over an AWS IoT MQTT stream instead of (or besides) "url": "stream" and
# "file_id" in "delta", as in a stream OTA document (whose top-level "stream"/"file_id" are then
# the full image to fall back to). Over MQTT it is asked for in _IN-byte blocks, one per decoder
# read (iotjobs.stream.Blocks); offered both ways, ota_protocol picks.
#
# Patch format (written from detools' format, decoded here): byte 0 is 0b0TTTCCCC (type 0 =
# sequential; compression 0 = none, 4 = heatshrink), then the new size as a detools size, then
# the (compressed) stream: a data-format size (must be 0), then until the new size is reached:
# diff n + n bytes (new = diff + base, mod 256, reading on in the base), extra n + n bytes
# (new = extra), an adjustment (the base position moves by it, signed).
# A detools size: first byte 0x80 more | 0x40 negative | 6 low bits, then 7 bits per byte.
# heatshrink: one byte (window_bits - 4) << 4 | (lookahead_bits - 3), then bits MSB first:
# 1 + an 8-bit literal, or 0 + (window_bits) distance-1 + (lookahead_bits) count-1 of a copy
# from that far back in the output (the window starts as zeros); zero bits pad the last byte.
#
# Fixed buffers (patch input, decoded bytes, base cache, the heatshrink window, the caller's
# 4096-byte output block); a block allocates nothing. Resume: a patch cannot be entered
# part-way without the decoder's state, so at an output block boundary, once per _CK_BYTES of
# patch, the whole state is checkpointed in the job state (ctx.save): bytes made, where in the
# bsdiff stream, the base position, the patch offset, the bit reader, the heatshrink window
# and its undelivered bytes. After a reset (or a cut connection) the patch continues from the
# checkpoint (its source from the start of the _IN-byte read the checkpoint is in: a Range
# request, or the stream block), the new image's hash is recomputed from the slot, and the
# patch's own SHA-256 is then not checked (the new image's SHA-256 and signature always are);
# without a checkpoint it starts again from its first byte (the base is untouched until
# set_boot).
from iotjobs.agent import Failed, Rejected, room
from micropython import const

_BLOCK = const(4096)
_IN = const(1024)  # patch bytes per network read
_PLAIN = const(512)  # decoded bytes per heatshrink round
_BASE = const(1024)  # base cache (a divisor of _BLOCK)
_MAX_WBITS = const(12)  # a heatshrink window of 4 KB at most (jobsctl image delta knows it)
_CK_BYTES = const(16384)  # patch bytes between checkpoints


def parse(doc, slot_size, keyed, what):
    # ota.parse for a document with "delta": the target's checks on the document without it,
    # the same URL/size/hash checks on the patch, then the base.
    from iotjobs import ota

    d = doc["delta"]
    if not isinstance(d, dict):
        raise Rejected("'delta' must be an object")
    for k in d:
        if k not in ("url", "stream", "file_id", "size", "sha256", "base_size", "base_sha256"):
            raise Rejected("unknown field 'delta.%s'" % k)
    full = dict(doc)
    del full["delta"]
    fallback = "url" in full or "stream" in full
    if not fallback:  # the target's checks need a source: the patch's stands in
        for k in ("url", "stream", "file_id"):
            if k in d:
                full[k] = d[k]
    job = ota.parse(full, slot_size, keyed, what)
    if not fallback:
        job["url"] = job["stream"] = None
    if job["sha256"] is None:
        raise Rejected("a delta needs the new image's 'sha256'")
    p = {k: d[k] for k in ("url", "stream", "file_id") if k in d}
    p.update(size=d.get("size"), sha256=d.get("sha256"))
    p = ota.parse(p, slot_size, False, what)
    n = d.get("base_size")
    if not isinstance(n, int) or not 0 < n <= slot_size:
        raise Rejected("'delta.base_size' must be a positive integer within the slot")
    base = ota._hex(d.get("base_sha256"), 64)
    if base is None:
        raise Rejected("'delta.base_sha256' must be 64 hex digits")
    job["delta"] = {"url": p["url"], "size": p["size"], "sha256": p["sha256"]}
    job["delta"].update(stream=p["stream"], fileid=p["fileid"])
    job["delta"].update(base_size=n, base=base)
    return job


async def check_base(ctx, d):
    # Before anything is downloaded: is the running image the patch's base?
    await room()  # apart from this module's import
    from iotjobs.fetch import rehash

    part = ctx.board.running_slot()
    n = d["base_size"]
    if n > part.size:
        raise Rejected("delta base of %d bytes is larger than the running slot" % n)
    buf = bytearray(_BLOCK)
    h = await rehash(part, buf, n)  # the whole blocks
    tail = memoryview(buf)[: n % _BLOCK]
    if n % _BLOCK:
        part.readblocks(n // _BLOCK, tail)
        h.update(tail)
    if h.digest() != d["base"]:
        raise Rejected("delta base mismatch: the running image is not the patch's base")


async def step(ctx, doc):
    # The "delta" step of the OTA handler: -> "verify", or "download" (falling back to the
    # full image) when the patch fails and the document offers one.
    from iotjobs import ota

    st = ctx.state
    out = ctx.board.update_slot(st["slot"])
    limit, keyed = out.size, bool(ctx.config.get("ota_key_file"))
    job = await ota.aparse(doc, limit, keyed)
    try:
        st["sha256"] = await _apply(ctx, job, out, limit, keyed)
    except Failed as e:
        st.pop("ck", None)
        if job["url"] is None and job["stream"] is None:
            raise
        ctx.log("delta failed (%s); downloading the full image" % e.args[0], "warning")
        st["off"] = 0
        await ctx.progress({"step": "download", "reason": "delta failed: %s" % e.args[0]}, True)
        return "download"
    st.pop("ck", None)
    st["off"] = job["size"]
    return "verify"


async def _apply(ctx, job, out, limit, keyed):
    import hashlib

    await room()
    from iotjobs import fetch

    d = job["delta"]
    size = job["size"]
    # The patch over the MQTT stream when the document offers one, unless the device prefers
    # HTTPS (ota_protocol) and the document offers that too.
    mqtt = d["stream"] is not None and (
        d["url"] is None or ctx.config.get("ota_protocol") != "http"
    )
    src = {"url": d["url"]}
    ob = bytearray(_BLOCK)
    p = Patcher(ctx.board.running_slot(), out, d["base_size"], size, d["size"], ob)
    s = None
    if mqtt:
        await room()
        from iotjobs import stream

        s = stream.Session(ctx, {"stream": d["stream"], "fileid": d["fileid"]}, _IN)
    tries = [0, 0]
    while True:
        ck = ctx.state.get("ck")  # the last checkpoint, if any
        at = p.start(ck)  # the source from there
        # MQTT closed for the download (fetch.open_url): check in at every reconnect (see ota).
        await ctx.checkin({"step": "delta", "progress": "%d/%d" % (at, d["size"])})
        await ctx.check()
        if s is None:
            r = await fetch.open_url(ctx, src, at, tries, lambda x: {"url": _url(x, limit, keyed)})
            if r is None:
                continue
        else:
            r = None
        try:
            if s is not None:
                await s.link()
                r = p.ticker = stream.Blocks(s, d["size"], at, p.inb)
            elif r.total != d["size"]:
                raise Failed(
                    "the server has %d patch bytes, the job says %d" % (r.total, d["size"])
                )
            if ck:
                ctx.log("resuming the patch at %d of %d" % (ck[4], d["size"]))
            hp = hashlib.sha256()
            ho = await fetch.rehash(out, ob, ck[0]) if ck else hashlib.sha256()
            await p.run(r, hp, ho, ctx, ck)
            break
        except OSError as e:
            if s is not None:
                ctx.link.drop(e)
            if ctx.state.get("ck") is not ck:
                tries[0] = 0  # it got somewhere: failures in a row count from here
            tries[0] = await fetch.net_fail(ctx, tries[0], e)  # and again from the last checkpoint
        finally:
            if r is not None:
                r.close()
    if s is not None:
        ctx.log("stream: %d patch blocks in %d requests" % (s.blocks, s.requests))
    if not ck and hp.digest() != d["sha256"]:
        raise Failed("patch SHA-256 mismatch")
    digest = ho.digest()
    if digest != job["sha256"]:
        raise Failed("the rebuilt image's SHA-256 does not match")
    await ctx.progress({"step": "verify", "progress": "%d/%d" % (size, size)}, True)
    return fetch.hexdigest(digest)


def _url(doc, limit, keyed):
    # The patch's URL from a fresh copy of the document (an expired pre-signed URL renewed).
    from iotjobs import ota

    return ota.parse(doc, limit, keyed)["delta"]["url"]


class Patcher:
    def __init__(self, base, out, base_size, size, psize, ob):
        self.base, self.out, self.bsize, self.size, self.psize = base, out, base_size, size, psize
        self.ob = ob  # the output block
        self.tail = memoryview(ob)[: size % _BLOCK]
        self.inb = bytearray(_IN)
        self.inlast = memoryview(self.inb)[: psize % _IN]
        self.pl = bytearray(_PLAIN)
        self.bb = bytearray(_BASE)
        self.win = bytearray(0)  # the heatshrink window, made when a patch names its size
        self.every = _CK_BYTES  # 0: no checkpoints (bench/delta_apply.py, under heap_lock)
        # An MQTT stream source (iotjobs.stream.Blocks), or None: while it has blocks in
        # flight, the agent's MQTT read and progress reports (which would take them off the
        # socket) wait, and an output block only yields (ticker.pause()).
        self.ticker = None
        # Every attribute exists before run(): a new one would grow the dict (an allocation).
        self.src = self.hp = None  # the response and the patch's hash, given to run()
        self.p, self.hs = self.inb, False
        self.left = self.ip = self.il = self.pp = self.pn = 0
        self.wb = self.lb = self.mask = self.acc = self.nb = self.head = self.cnt = self.dist = 0

    # ---- patch bytes, straight from the network

    def _fill(self):
        n = self.left
        if n == 0:
            raise Failed("the patch ends early")
        if n >= _IN:
            n = _IN
            self.src.readinto(self.inb, n)  # type: ignore[union-attr]
            self.hp.update(self.inb)  # type: ignore[union-attr]
        else:
            self.src.readinto(self.inlast, n)  # type: ignore[union-attr]
            self.hp.update(self.inlast)  # type: ignore[union-attr]
        self.left -= n
        self.ip, self.il = 0, n

    def _raw(self):
        if self.ip == self.il:
            self._fill()
        b = self.inb[self.ip]
        self.ip += 1
        return b

    # ---- decoded bytes: self.p[self.pp:self.pn]

    def _more(self):
        if self.hs:
            self.p, self.pp, self.pn = self.pl, 0, self._inflate()
        elif self.left or self.ip < self.il:
            if self.ip == self.il:
                self._fill()
            self.p, self.pp, self.pn = self.inb, self.ip, self.il
            self.ip = self.il
        else:
            self.pp = self.pn = 0

    def _byte(self):
        if self.pp == self.pn:
            self._more()
            if self.pn == 0:
                raise Failed("the patch ends early")
        b = self.p[self.pp]
        self.pp += 1
        return b

    def _num(self, raw=False):
        # A detools size (raw: from the header, before any compression).
        b = self._raw() if raw else self._byte()
        v, s = b & 0x3F, 6
        neg = b & 0x40
        while b & 0x80:
            if s > 27:
                raise Failed("bad number in the patch")
            b = self._raw() if raw else self._byte()
            v |= (b & 0x7F) << s
            s += 7
        return -v if neg else v

    # ---- heatshrink

    def _bits(self, n):
        # n bits MSB first, or -1 when the input ends first (the last byte's padding).
        acc, nb = self.acc, self.nb
        while nb < n:
            if self.ip == self.il:
                if not self.left:
                    return -1
                self._fill()
            acc = (acc << 8) | self.inb[self.ip]
            self.ip += 1
            nb += 8
        nb -= n
        self.acc, self.nb = acc & ((1 << nb) - 1), nb
        return acc >> nb

    def _inflate(self):
        pl, win, m = self.pl, self.win, self.mask
        head, cnt, dist = self.head, self.cnt, self.dist
        n = 0
        while n < _PLAIN:
            if cnt:
                c = win[(head - dist) & m]
                cnt -= 1
            else:
                t = self._bits(1)
                if t < 0:
                    break
                if t:
                    c = self._bits(8)
                    if c < 0:
                        break
                else:
                    dist = self._bits(self.wb) + 1
                    cnt = self._bits(self.lb) + 1
                    if dist <= 0 or cnt <= 0:
                        cnt = 0
                        break
                    continue
            win[head & m] = c
            head += 1
            pl[n] = c
            n += 1
        self.head, self.cnt, self.dist = head, cnt, dist
        return n

    # ---- the patch

    def _pos(self):
        # Patch bytes taken so far (heatshrink: into the bit reader; none: delivered).
        n = self.psize - self.left - (self.il - self.ip)
        return n if self.hs else n - (self.pn - self.pp)

    def _save(self, ctx, done, ph, n, fp):
        import binascii

        hs = self.hs
        w = binascii.b2a_base64(bytes(self.win[: 1 << self.wb])) if hs else b""
        rest = binascii.b2a_base64(bytes(self.pl[self.pp : self.pn])) if hs else b""
        ck = [done, ph, n, fp, self._pos(), self.acc, self.nb, self.head, self.cnt, self.dist]
        ck += [self.wb if hs else 0, self.lb, w.decode(), rest.decode()]
        ctx.state["ck"] = ck
        ctx.save()

    def start(self, ck):
        # Where the patch source starts for checkpoint ck (None: the first byte): the read of
        # _IN bytes the checkpoint is in, so that reads stay _IN-aligned in the patch (an MQTT
        # stream of _IN-byte blocks gives one block per read).
        return ck[4] - ck[4] % _IN if ck else 0

    def _load(self, ck):
        import binascii

        at = ck[4]
        self.left = self.psize - self.start(ck)
        self.hs = ck[10] > 0
        if self.hs:
            wb = self.wb = ck[10]
            self.lb, self.mask = ck[11], (1 << wb) - 1
            w = binascii.a2b_base64(ck[12])
            if len(w) != 1 << wb:
                raise Failed("bad checkpoint")
            self.win = bytearray(w)
            r = binascii.a2b_base64(ck[13])
            self.pl[: len(r)] = r
            self.p, self.pn = self.pl, len(r)
            self.acc, self.nb, self.head = ck[5], ck[6], ck[7]
            self.cnt, self.dist = ck[8], ck[9]
        k = at % _IN
        if k:  # the read the checkpoint is in, from its start; on from the checkpoint
            self._fill()
            if self.hs:
                self.ip = k
            else:
                self.p, self.pp, self.pn = self.inb, k, self.il
                self.ip = self.il
        return ck[0], ck[1], ck[2], ck[3]

    def _header(self):
        self.left = self.psize
        b = self._raw()
        if b >> 4 != 0:
            raise Failed("not a sequential detools patch")
        n = self._num(True)
        if n != self.size:
            raise Failed("the patch makes %d bytes, the job says %d" % (n, self.size))
        self.hs = (b & 15) == 4
        if self.hs:
            b = self._raw()
            wb, lb = (b >> 4) + 4, (b & 15) + 3
            if wb > _MAX_WBITS or lb >= wb:
                raise Failed("heatshrink window 2^%d / lookahead 2^%d not supported" % (wb, lb))
            if len(self.win) < 1 << wb:
                self.win = bytearray(1 << wb)  # once per job; zeros, as heatshrink starts
            else:
                for i in range(1 << wb):
                    self.win[i] = 0
            self.wb, self.lb, self.mask = wb, lb, (1 << wb) - 1
            self.acc = self.nb = self.head = self.cnt = self.dist = 0
        elif b & 15:
            raise Failed("patch compression %d not supported (none or heatshrink)" % (b & 15))
        if self._num():
            raise Failed("data-format patches are not supported")

    async def run(self, src, hp, ho, ctx, ck=None):
        # From the patch's first byte (ck None), or from checkpoint ck (src starts at ck[4]).
        self.src, self.hp = src, hp
        self.ip = self.il = self.pp = self.pn = 0
        if ck:
            done, ph, n, fp = self._load(ck)
        else:
            self._header()
            done = ph = n = fp = 0
        # ph: 0 diff length, 1 diff bytes, 2 extra length, 3 extra bytes, 4 adjustment
        size, ob = self.size, self.ob  # (2 and 3 names at once allocate nothing; 4 would)
        bb, out = self.bb, self.out
        bs = bn = 0  # base cache start, length
        mark = self._pos()
        while True:
            if ph == 1 or ph == 3:
                if not n:
                    ph += 1
                    continue
                if self.pp == self.pn:
                    self._more()
                    if self.pn == 0:
                        raise Failed("the patch ends early")
                p, pp = self.p, self.pp
                op = done & (_BLOCK - 1)
                k = self.pn - pp
                if k > n:
                    k = n
                if k > _BLOCK - op:
                    k = _BLOCK - op
                if ph == 3:
                    for i in range(k):
                        ob[op + i] = p[pp + i]
                else:
                    if not bs <= fp < bs + bn:
                        if fp < 0 or fp >= self.bsize:
                            raise Failed("the patch reads outside the base")
                        bs = fp - fp % _BASE
                        bn = self.bsize - bs
                        if bn > _BASE:
                            bn = _BASE
                        self.base.readblocks(bs // _BLOCK, bb, bs % _BLOCK)
                    j = fp - bs
                    if k > bn - j:
                        k = bn - j
                    for i in range(k):
                        ob[op + i] = (p[pp + i] + bb[j + i]) & 0xFF
                    fp += k
                self.pp = pp + k
                done += k
                n -= k
                if not done & (_BLOCK - 1):
                    ho.update(ob)
                    out.writeblocks(done // _BLOCK - 1, ob)
                    if self.every and self._pos() - mark >= self.every and done < size:
                        self._save(ctx, done, ph, n, fp)
                        mark = self._pos()
                    t = self.ticker
                    if t is not None and t.busy():
                        await t.pause(ctx)
                        continue
                    if ctx.progress_due():
                        await ctx.progress({"step": "delta", "progress": "%d/%d" % (done, size)})
                    await ctx.tick()
            elif ph == 4:
                fp += self._num()
                ph = 0
            elif ph == 0 and done >= size:
                break
            else:
                n = self._num()
                if n < 0 or done + n > size:
                    raise Failed("bad %s length in the patch" % ("extra" if ph else "diff"))
                ph += 1
        if self.pp < self.pn or (self.hs and (self.cnt or self._inflate())):
            raise Failed("the patch has data past its end")
        if self.left or self.ip < self.il:
            raise Failed("the patch has data past its end")
        op = done & (_BLOCK - 1)
        if op:
            for i in range(op, _BLOCK):
                ob[i] = 0xFF
            ho.update(self.tail)
            out.writeblocks(size // _BLOCK, ob)
