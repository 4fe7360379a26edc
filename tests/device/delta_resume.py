# Resume from every checkpoint of a delta patch (iotjobs.delta): run the patch once, keeping
# each checkpoint the decoder saves, then for each one erase the new slot from the checkpoint's
# block on, continue from it (the patch file read from the start of the decoder read the
# checkpoint is in, the new image's hash recomputed from the slot) and compare the result with
# the uninterrupted run's.
#   micropython delta_resume.py PATCH BASE_SIZE NEW_SIZE EVERY
# prints: OK <checkpoints> <sha256>   or   BAD <checkpoint index> <sha256>
import asyncio
import hashlib
import os
import sys

import esp32
from iotjobs import fetch
from iotjobs.delta import Patcher


class _File:
    def __init__(self, f):
        self.f = f

    def readinto(self, buf, n):
        return self.f.readinto(buf)


class _Ctx:
    def __init__(self):
        self.state = {}
        self.cks = []

    def save(self):
        self.cks.append(self.state["ck"])

    def progress_due(self):
        return False

    def tick(self):
        return asyncio.sleep_ms(0)


def apply(base, out, path, base_size, size, every, ctx, ck=None):
    psize = os.stat(path)[6]
    ob = bytearray(4096)
    p = Patcher(base, out, base_size, size, psize, ob)
    p.every = every
    ho = asyncio.run(fetch.rehash(out, ob, ck[0])) if ck else hashlib.sha256()
    with open(path, "rb") as f:
        if ck:
            f.seek(p.start(ck))  # the source starts at the read the checkpoint is in
        asyncio.run(p.run(_File(f), hashlib.sha256(), ho, ctx, ck))
    return ho.digest().hex()


def main(path, base_size, size, every):
    base, out = esp32.Partition("ota_0"), esp32.Partition("ota_1")
    ctx = _Ctx()
    want = apply(base, out, path, base_size, size, every, ctx)
    ff = b"\xff" * 4096
    for i, ck in enumerate(ctx.cks):
        for blk in range(ck[0] // 4096, (size + 4095) // 4096):
            out.writeblocks(blk, ff)
        got = apply(base, out, path, base_size, size, every, _Ctx(), ck)
        if got != want:
            return "BAD %d %s" % (i, got)
    return "OK %d %s" % (len(ctx.cks), want)


a = sys.argv
print(main(a[1], int(a[2]), int(a[3]), int(a[4])))
