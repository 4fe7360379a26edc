# What the agent does between two yields to the event loop, each timed alone (CPU-bound: the
# least of N runs filters out the machine's noise). Used by bench.guest beside the
# probe's wall-clock figures. Run under the Unix port with a simulated board folder (a signed
# 1 MiB image in ota_1) as the current directory:
#   micropython guest_holds.py PUBKEY_PEM SIG_B64 DIGEST_HEX IMAGE
# prints one line per piece: <name> <least us> <median us>
import asyncio
import gc
import hashlib
import json
import sys
import time

import esp32

_N = 15


def timed(name, fn):
    ts = []
    for i in range(_N):
        t0 = time.ticks_us()
        fn(i)
        ts.append(time.ticks_diff(time.ticks_us(), t0))
    ts.sort()
    print(name, ts[0], ts[len(ts) // 2])


def main(pub, sig, digest, image):
    import binascii

    from iotjobs import agent, ecdsa, protocol

    esp32._power_on()
    slot = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    buf = bytearray(4096)
    with open(image, "rb") as f:  # the signed image into the slot (not timed)
        n = 0
        while f.readinto(buf):
            slot.writeblocks(n, buf)
            n += 1
            buf[:] = b"\xff" * 4096
    h = hashlib.sha256()

    def block(i):  # a downloaded block's work after the read: hash, flash
        h.update(buf)
        slot.writeblocks(340 + i, buf)

    timed("block-hash-and-write-4KiB", block)
    key = ecdsa.load_pubkey(open(pub).read())
    raw = binascii.a2b_base64(sig)
    d = binascii.unhexlify(digest)
    r, s = ecdsa.parse_sig(raw)
    R = (key[0], key[1], 1)
    Q = (key[0], key[1], 1)
    timed("ecdsa-one-bit-double-add", lambda i: ecdsa._add(*ecdsa._double(*R), *Q))

    def chunk(i):  # 16 bits of the modular inverse: what runs between two of its yields
        rr = 1
        m = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
        for _ in range(16):
            rr = rr * rr % m
            rr = rr * s % m

    timed("ecdsa-inverse-16-bits", chunk)
    timed(
        "ecdsa-verify-whole-if-it-did-not-yield", lambda i: asyncio.run(ecdsa.verify(key, d, raw))
    )
    doc = json.dumps(
        {
            "execution": {
                "jobId": "ota-1",
                "status": "IN_PROGRESS",
                "versionNumber": 2,
                "jobDocument": {
                    "operation": "ota",
                    "url": "https://s3.example.com/b/ota/img.bin?" + "X-Amz-Signature=" + "a" * 700,
                    "size": 1048576,
                    "sha256": "0" * 64,
                    "signature": sig,
                    "version": "2.0.0",
                },
            },
            "clientToken": "abcde-1",
        }
    )
    timed("job-document-parse", lambda i: protocol.reply_execution(json.loads(doc)))
    st = {"job": "ota-1", "version": 3, "op": "ota", "data": {"step": "download", "off": 65536}}
    timed("job-state-save", lambda i: agent.save("bench-state.json", st))
    timed("gc-collect", lambda i: gc.collect())

    def imp(i):
        __import__("iotjobs.ota")
        agent.unload(("iotjobs.ota",))

    timed("import-ota-handler", imp)
    timed("set-boot-1MiB-image-sim", lambda i: esp32.Partition("ota_1").set_boot())


a = sys.argv
main(a[1], a[2], a[3], a[4])
