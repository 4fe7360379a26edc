# ECDSA P-256 signature verification in pure MicroPython (what AWS code signing calls
# sig-sha256-ecdsa): the firmware's TLS stack has the curve but does not expose it.
#
# Verification only, on public data: no secret is handled, so constant time is not needed.
# Points are in Jacobian coordinates (X, Y, Z) ~ (X/Z^2, Y/Z^3); u1*G + u2*Q is computed in one
# pass (Shamir's trick), yielding to the event loop after every bit (verify() is a coroutine:
# ~0.1 ms of CPU between two yields here, where the whole check takes tens of ms). Bad input of
# any kind gives False, never an exception.
#
# Every bit leaves ~4.5 KB of garbage (a 256-bit int per operation), so the GC runs every ~15
# bits (~70 KB free at this point on esp32-plain): left to itself, a pass (~0.25 ms here, tens of
# ms on a board) lands inside a bit and holds the loop for both. The check collects instead at a
# yield, in a stretch of its own, before the heap is full: every 10 bits (~45 KB of garbage) and
# every 128 of an inversion's (~45 KB): ~1.5 times the passes the GC alone would make.
import asyncio
import gc

from micropython import const

_P = const(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF)
_B = const(0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B)
_N = const(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551)
_GX = const(0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296)
_GY = const(0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5)

# DER SubjectPublicKeyInfo header of an uncompressed P-256 key (id-ecPublicKey, prime256v1).
_SPKI = (
    b"\x30\x59\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01"
    b"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07\x03\x42\x00"
)


def load_pubkey(data):
    # PEM "PUBLIC KEY", its DER, or the 65-byte uncompressed point -> (x, y). ValueError if it
    # is none of these or the point is not on the curve.
    if isinstance(data, str):
        data = data.encode()
    if data.lstrip().startswith(b"-----BEGIN CERTIFICATE-----"):
        data = _cert_key(data)  # AWS's certfile: the certificate's subject key, nothing else
    elif data.lstrip().startswith(b"-----BEGIN PUBLIC KEY-----"):
        import binascii

        lines = data.strip().split(b"\n")
        if not lines[-1].strip().startswith(b"-----END PUBLIC KEY-----"):
            raise ValueError("PEM public key has no END line")
        data = binascii.a2b_base64(b"".join(x.strip() for x in lines[1:-1]))
    if len(data) == 91 and data[:26] == _SPKI:
        data = data[26:]
    if len(data) != 65 or data[0] != 4:
        raise ValueError("not an uncompressed P-256 public key")
    x = int.from_bytes(data[1:33], "big")
    y = int.from_bytes(data[33:], "big")
    if x >= _P or y >= _P or (y * y - (x * x * x - 3 * x + _B)) % _P:
        raise ValueError("the public key is not a point of P-256")
    return (x, y)


def _cert_key(pem):
    # The P-256 SubjectPublicKeyInfo inside a PEM certificate (kept out of load_pubkey: every
    # function's bytecode is one heap block when the module is loaded from .mpy).
    import binascii

    lines = pem.strip().split(b"\n")
    if not lines[-1].strip().startswith(b"-----END CERTIFICATE-----"):
        raise ValueError("PEM certificate has no END line")
    der = binascii.a2b_base64(b"".join(x.strip() for x in lines[1:-1]))
    i = der.find(_SPKI)
    if i < 0:
        raise ValueError("the certificate's key is not a P-256 key")
    return der[i : i + 91]


def _der_int(sig, i):
    # -> (value, next index) of a minimal positive DER INTEGER at sig[i], or raise ValueError.
    if i + 2 > len(sig) or sig[i] != 2:
        raise ValueError
    n = sig[i + 1]
    i += 2
    if not 0 < n <= 33 or i + n > len(sig):
        raise ValueError
    if sig[i] & 0x80 or (n > 1 and sig[i] == 0 and not sig[i + 1] & 0x80):
        raise ValueError  # negative, or not minimal
    return int.from_bytes(sig[i : i + n], "big"), i + n


def parse_sig(sig):
    # Strict DER SEQUENCE { r INTEGER, s INTEGER } -> (r, s); ValueError for anything else.
    if len(sig) < 8 or sig[0] != 0x30 or sig[1] != len(sig) - 2:
        raise ValueError("bad signature encoding")
    try:
        r, i = _der_int(sig, 2)
        s, i = _der_int(sig, i)
    except ValueError:
        raise ValueError("bad signature encoding")
    if i != len(sig) or not (0 < r < _N and 0 < s < _N):
        raise ValueError("bad signature values")
    return r, s


async def verify(pub, digest, sig):
    # pub: (x, y) from load_pubkey; digest: the 32-byte SHA-256; sig: DER bytes.
    try:
        r, s = parse_sig(sig)
    except (ValueError, TypeError):
        return False
    if len(digest) != 32:
        return False
    e = int.from_bytes(digest, "big")
    w = await _inverse(s, _N)
    u1 = e * w % _N
    u2 = r * w % _N
    X, Y, Z = await _shamir(u1, u2, pub)
    if Z == 0:
        return False
    zi = await _inverse(Z, _P)
    x = X * zi * zi % _P
    return x % _N == r


async def _inverse(x, m):
    # x^(m-2) mod m (m prime), square and multiply with a yield every 16 bits: pow() would
    # hold the loop for the whole exponentiation (~0.5 ms here, tens of ms on a board).
    e = m - 2
    r = 1
    for i in range(255, -1, -1):
        r = r * r % m
        if e >> i & 1:
            r = r * x % m
        if not i & 15:
            await asyncio.sleep_ms(0)
            if not i & 127:
                gc.collect()  # see the top
                await asyncio.sleep_ms(0)
    return r


def _double(X, Y, Z):
    # dbl-2001-b for a = -3.
    if Z == 0 or Y == 0:
        return (1, 1, 0)
    p = _P
    d = Z * Z % p
    g = Y * Y % p
    b = X * g % p
    a = 3 * (X - d) * (X + d) % p
    X3 = (a * a - 8 * b) % p
    Z3 = ((Y + Z) * (Y + Z) - g - d) % p
    Y3 = (a * (4 * b - X3) - 8 * g * g) % p
    return (X3, Y3, Z3)


def _add(X1, Y1, Z1, X2, Y2, Z2):
    if Z1 == 0:
        return (X2, Y2, Z2)
    if Z2 == 0:
        return (X1, Y1, Z1)
    p = _P
    z1 = Z1 * Z1 % p
    z2 = Z2 * Z2 % p
    u1 = X1 * z2 % p
    u2 = X2 * z1 % p
    s1 = Y1 * z2 * Z2 % p
    s2 = Y2 * z1 * Z1 % p
    h = (u2 - u1) % p
    r = (s2 - s1) % p
    if h == 0:
        return _double(X1, Y1, Z1) if r == 0 else (1, 1, 0)
    h2 = h * h % p
    h3 = h * h2 % p
    v = u1 * h2 % p
    X3 = (r * r - h3 - 2 * v) % p
    Y3 = (r * (v - X3) - s1 * h3) % p
    Z3 = h * Z1 * Z2 % p
    return (X3, Y3, Z3)


async def _shamir(u1, u2, q):
    g = (_GX, _GY, 1)
    qq = (q[0], q[1], 1)
    table = ((1, 1, 0), g, qq, _add(*g, *qq))  # [0] (infinity) is never added
    R = (1, 1, 0)
    for i in range(255, -1, -1):
        R = _double(*R)
        k = (u1 >> i & 1) | (u2 >> i & 1) << 1
        if k:
            R = _add(*R, *table[k])
        await asyncio.sleep_ms(0)
        if not i % 10:
            gc.collect()  # see the top
            await asyncio.sleep_ms(0)
    return R
