# Download a URL with iotjobs.http the way the OTA handler does, under heap_lock for the
# whole-block hot loop, and print one result line:
#   OK <status> <start> <length> <total> <sha256 of the bytes received> <blocks in the hot loop>
#   ERR <exception name> <args>
# usage: micropython fetch.py URL CA_FILE|- [START] [allow_http]
import hashlib
import sys

import micropython
from iotjobs import http


def main(url, ca, start, allow_http):
    cadata = None
    if ca != "-":
        with open(ca, "rb") as f:
            cadata = f.read()
    buf = bytearray(4096)
    h = hashlib.sha256()
    r = http.open(url, start, cadata, 3000, allow_http)
    left = r.length
    blocks = 0
    try:
        micropython.heap_lock()  # the hot loop must not allocate: MemoryError if it does
        try:
            while left >= 4096:
                r.readinto(buf)
                h.update(buf)
                left -= 4096
                blocks += 1
        finally:
            micropython.heap_unlock()
        if left:
            n = r.readinto(buf, left)
            h.update(memoryview(buf)[:n])
    finally:
        r.close()
    return "OK %d %d %d %d %s %d" % (r.status, r.start, r.length, r.total, h.digest().hex(), blocks)


try:
    a = sys.argv
    print(main(a[1], a[2], int(a[3]) if len(a) > 3 else 0, len(a) > 4))
except Exception as e:
    print("ERR", type(e).__name__, e.args)
