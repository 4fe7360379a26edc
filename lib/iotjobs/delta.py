# Delta OTA: rebuild the new image in the next slot from the running image (the base) and a
# detools "sequential" patch, while the patch streams in. Imported only by a delta job.
#
# Document (inside the native OTA document, whose size/sha256/signature/version stay the new
# image's; "url" is optional there and, when present, is the full image to fall back to):
#   "delta": {"url": "<patch>", "size": <patch bytes>, "sha256": "<patch>",
#             "base_size": <bytes>, "base_sha256": "<the running image's first base_size bytes>"}
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
# part-way without the decoder's state, so after a reset the patch is applied again from its
# start (the base is the running slot, untouched until set_boot).
from iotjobs.agent import Failed, Rejected
from micropython import const

_BLOCK = const(4096)
_IN = const(1024)  # patch bytes per network read
_PLAIN = const(512)  # decoded bytes per heatshrink round
_BASE = const(1024)  # base cache (a divisor of _BLOCK)
_MAX_WBITS = const(12)  # a heatshrink window of 4 KB at most (jobsctl image delta knows it)


def parse(doc, slot_size, keyed, what):
    # ota.parse for a document with "delta": the target's checks on the document without it,
    # the same URL/size/hash checks on the patch, then the base.
    from iotjobs import ota

    d = doc["delta"]
    if not isinstance(d, dict):
        raise Rejected("'delta' must be an object")
    for k in d:
        if k not in ("url", "size", "sha256", "base_size", "base_sha256"):
            raise Rejected("unknown field 'delta.%s'" % k)
    full = dict(doc)
    del full["delta"]
    fallback = "url" in full
    if not fallback:
        full["url"] = d.get("url")
    job = ota.parse(full, slot_size, keyed, what)
    if not fallback:
        job["url"] = None
    if job["sha256"] is None:
        raise Rejected("a delta needs the new image's 'sha256'")
    p = {"url": d.get("url"), "size": d.get("size"), "sha256": d.get("sha256")}
    p = ota.parse(p, slot_size, False, what)
    n = d.get("base_size")
    if not isinstance(n, int) or not 0 < n <= slot_size:
        raise Rejected("'delta.base_size' must be a positive integer within the slot")
    base = ota._hex(d.get("base_sha256"), 64)
    if base is None:
        raise Rejected("'delta.base_sha256' must be 64 hex digits")
    job["delta"] = {"url": p["url"], "size": p["size"], "sha256": p["sha256"]}
    job["delta"].update(base_size=n, base=base)
    return job


def check_base(ctx, d):
    # Before anything is downloaded: is the running image the patch's base?
    import hashlib

    part = ctx.board.running_partition()
    n = d["base_size"]
    if n > part.info()[3]:
        raise Rejected("delta base of %d bytes is larger than the running slot" % n)
    buf = bytearray(_BLOCK)
    h = hashlib.sha256()
    off = 0
    while off + _BLOCK <= n:
        part.readblocks(off // _BLOCK, buf)
        h.update(buf)
        off += _BLOCK
    if off < n:
        part.readblocks(off // _BLOCK, memoryview(buf)[: n - off])
        h.update(memoryview(buf)[: n - off])
    if h.digest() != d["base"]:
        raise Rejected("delta base mismatch: the running image is not the patch's base")


def step(ctx, doc):
    # The "delta" step of the OTA handler: -> "verify", or "download" (falling back to the
    # full image) when the patch fails and the document offers one.
    from iotjobs import ota

    st = ctx.state
    out = ota._slot(ctx)
    limit, keyed = out.info()[3], bool(ctx.config.get("ota_key_file"))
    job = ota.parse(doc, limit, keyed)
    try:
        st["sha256"] = _apply(ctx, job, out, limit, keyed)
    except Failed as e:
        if job["url"] is None:
            raise
        ctx.log("delta failed (%s); downloading the full image" % e.args[0], "warning")
        st["off"] = 0
        ctx.progress({"step": "download", "reason": "delta failed: %s" % e.args[0]}, True)
        return "download"
    st["off"] = job["size"]
    return "verify"


def _apply(ctx, job, out, limit, keyed):
    import hashlib

    from iotjobs import ota

    d = job["delta"]
    size = job["size"]
    src = {"url": d["url"]}
    ob = bytearray(_BLOCK)
    p = Patcher(ctx.board.running_partition(), out, d["base_size"], size, d["size"], ob)
    tries = [0, 0]
    while True:
        ctx.check()
        r = ota.open_url(ctx, src, 0, tries, lambda x: {"url": _url(x, limit, keyed)})
        if r is None:
            continue
        try:
            if r.total != d["size"]:
                raise Failed(
                    "the server has %d patch bytes, the job says %d" % (r.total, d["size"])
                )
            hp, ho = hashlib.sha256(), hashlib.sha256()
            p.run(r, hp, ho, ctx)
            break
        except OSError as e:
            tries[0] = ota._net_fail(ctx, tries[0], e)  # and again from the patch's start
        finally:
            r.close()
    if hp.digest() != d["sha256"]:
        raise Failed("patch SHA-256 mismatch")
    digest = ho.digest()
    if digest != job["sha256"]:
        raise Failed("the rebuilt image's SHA-256 does not match")
    ctx.progress({"step": "verify", "progress": "%d/%d" % (size, size)}, True)
    return ota._tohex(digest)


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

    def run(self, src, hp, ho, ctx):
        self.src, self.hp = src, hp
        self.left = self.psize
        self.ip = self.il = self.pp = self.pn = 0
        size = self.size
        b = self._raw()
        if b >> 4 != 0:
            raise Failed("not a sequential detools patch")
        n = self._num(True)
        if n != size:
            raise Failed("the patch makes %d bytes, the job says %d" % (n, size))
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
        ob, bb, out = self.ob, self.bb, self.out
        to = op = 0  # bytes made; bytes in the output block
        fp, bs, bn = 0, 0, 0  # base position; base cache start, length
        while to < size:
            for extra in (0, 1):
                n = self._num()
                if n < 0 or to + n > size:
                    raise Failed("bad %s length in the patch" % ("extra" if extra else "diff"))
                to += n
                while n:
                    if self.pp == self.pn:
                        self._more()
                        if self.pn == 0:
                            raise Failed("the patch ends early")
                    p, pp = self.p, self.pp
                    k = self.pn - pp
                    if k > n:
                        k = n
                    if k > _BLOCK - op:
                        k = _BLOCK - op
                    if extra:
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
                    op += k
                    n -= k
                    if op == _BLOCK:
                        ho.update(ob)
                        out.writeblocks((to - n) // _BLOCK - 1, ob)
                        op = 0
                        if ctx.progress_due():
                            ctx.progress({"step": "delta", "progress": "%d/%d" % (to - n, size)})
                        ctx.check()
            fp += self._num()
        if self.pp < self.pn or (self.hs and (self.cnt or self._inflate())):
            raise Failed("the patch has data past its end")
        if self.left or self.ip < self.il:
            raise Failed("the patch has data past its end")
        if op:
            for i in range(op, _BLOCK):
                ob[i] = 0xFF
            ho.update(self.tail)
            out.writeblocks(size // _BLOCK, ob)
