"""ECDSA P-256 verification in pure MicroPython (lib/iotjobs/ecdsa.py) against `cryptography`.

Signatures are made on the host with `cryptography` (what `jobsctl image sign` uses) and checked
on the Unix port: valid ones pass, anything altered fails, and malformed input is False, never
an exception.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

CHECK = """
import asyncio, json, binascii
from iotjobs import ecdsa
cases = json.loads(%r)
out = []
for pub, digest, sig in cases:
    try:
        k = ecdsa.load_pubkey(binascii.a2b_base64(pub) if not pub.startswith("-----") else pub)
    except ValueError as e:
        out.append("badkey")
        continue
    out.append(asyncio.run(ecdsa.verify(k, binascii.unhexlify(digest), binascii.a2b_base64(sig))))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(k: ec.EllipticCurvePrivateKey) -> str:
    return (
        k.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _b64(b: bytes) -> str:
    import base64

    return base64.b64encode(b).decode()


def _run(micropython, cases: list[tuple[str, str, str]]) -> list[object]:
    r = micropython(CHECK % json.dumps(cases), heapsize="64k").check()
    return json.loads(r.out)


def test_valid_signatures_verify_with_pem_der_and_raw_point_keys(micropython, key):
    data = b"firmware image bytes"
    digest = hashlib.sha256(data).hexdigest()
    pub = key.public_key()
    der = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = pub.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    cases = []
    for k in (_pem(key), _b64(der), _b64(raw)):
        sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
        cases.append((k, digest, _b64(sig)))
    assert _run(micropython, cases) == [True, True, True]


def test_altered_digest_signature_or_key_fails(micropython, key):
    data = b"firmware image bytes"
    digest = hashlib.sha256(data).hexdigest()
    sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
    other = ec.generate_private_key(ec.SECP256R1())
    flipped = bytearray(sig)
    flipped[10] ^= 1
    cases = [
        (_pem(key), hashlib.sha256(b"other image").hexdigest(), _b64(sig)),
        (_pem(key), digest, _b64(bytes(flipped))),
        (_pem(other), digest, _b64(sig)),
        (_pem(key), digest, _b64(sig[:-3])),  # truncated DER
        (_pem(key), digest, _b64(b"\x30\x06\x02\x01\x00\x02\x01\x01")),  # r = 0
        (_pem(key), digest, _b64(b"not a signature at all")),
        (_pem(key), digest, ""),
    ]
    assert _run(micropython, cases) == [False] * len(cases)


def test_key_that_is_not_a_curve_point_is_refused(micropython, key):
    raw = bytearray(
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    raw[40] ^= 1
    assert _run(micropython, [(_b64(bytes(raw)), "00" * 32, "")]) == ["badkey"]


def test_many_random_signatures_agree_with_cryptography(micropython):
    cases, expect = [], []
    for i in range(12):
        k = ec.generate_private_key(ec.SECP256R1())
        data = f"image {i}".encode()
        sig = k.sign(data, ec.ECDSA(hashes.SHA256()))
        good = i % 3 != 0
        digest = hashlib.sha256(data if good else data + b"!").hexdigest()
        cases.append((_pem(k), digest, _b64(sig)))
        expect.append(good)
    assert _run(micropython, cases) == expect
