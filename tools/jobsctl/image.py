"""ESP32 application images: build (for the simulation and tests), check, sign; simulated flash.

An app image is what ``esptool`` writes into an OTA slot and what the bootloader validates:

- a 24-byte header (magic 0xE9, segment count, SPI mode/size, entry point, chip id,
  ``hash_appended``);
- segments, each an 8-byte header (load address, length) and its bytes; the first one starts
  with the 256-byte ``esp_app_desc_t`` (magic 0xABCD5432, version, project name, ...);
- zero padding so that the checksum byte (0xEF xor every segment byte) ends a 16-byte line;
- with ``hash_appended``, the SHA-256 of everything before it.

Real MicroPython ``.app-bin`` files have the same layout, so :func:`check_app_image` and
:func:`read_app_version` work on them too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import struct
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import JobsctlError

MAGIC = 0xE9
DESC_MAGIC = 0xABCD5432
DESC_OFFSET = 24 + 8  # header + first segment header
SLOT_SIZE = 0x180000  # ota_0/ota_1 of MicroPython's ESP32_GENERIC OTA variant
BLOCK = 4096
_CHIP_ESP32 = 0
_DROM = 0x3F400020
_DRAM = 0x3FFB0000
_IRAM = 0x40080000


SECURE_VERSION_MAX = 0x7FFFFFFF  # the device keeps its floor in an NVS i32


def _app_desc(version: str, project: str, secure_version: int = 0) -> bytes:
    for what, s in (("version", version), ("project", project)):
        if not s or len(s.encode()) > 31:
            raise JobsctlError(f"image {what} must be 1-31 bytes")
    if not 0 <= secure_version <= SECURE_VERSION_MAX:
        raise JobsctlError(f"secure_version must be 0-{SECURE_VERSION_MAX}")
    return struct.pack(
        "<II8s32s32s16s16s32s32s80s",
        DESC_MAGIC,
        secure_version,  # anti-rollback counter (the device refuses a lower one)
        b"",
        version.encode(),
        project.encode(),
        b"00:00:00",
        b"Jan  1 2026",
        b"v5.2.2",
        hashlib.sha256(f"{project} {version}".encode()).digest(),
        b"",
    )


def build_app_image(
    version: str,
    size: int | None = None,
    project: str = "iotjobs-sim",
    seed: str | None = None,
    secure_version: int = 0,
) -> bytes:
    """A valid ESP32 app image of about ``size`` bytes (at least ~400) carrying ``version``
    and ``secure_version``. ``seed`` (default ``project/version``) picks the code bytes: two
    versions built with one seed differ only in their descriptor, checksum and hash, like a
    small change does."""
    desc = _app_desc(version, project, secure_version)
    drom = desc + bytes(256)  # rodata after the descriptor
    dram = b"\x00" * 64
    overhead = 24 + 3 * 8 + len(drom) + len(dram) + 16 + 32
    bulk_len = max(64, ((size or 0) - overhead) // 4 * 4)
    # Deterministic per version, so the same build twice gives the same bytes and hash.
    default = f"{project}/{version}" + (f"/{secure_version}" if secure_version else "")
    iram = random.Random(seed or default).randbytes(bulk_len)
    segments = [(_DROM, drom), (_DRAM, dram), (_IRAM, iram)]
    header = struct.pack(
        "<BBBBIB3sHBHH4sB",
        MAGIC,
        len(segments),
        2,  # DIO
        0x20,  # 4 MB, 40 MHz
        _IRAM,  # entry point
        0xEE,  # wp pin: not used
        b"\x00\x00\x00",
        _CHIP_ESP32,
        0,
        0,
        0xFFFF,
        b"\x00" * 4,
        1,  # hash appended
    )
    out = bytearray(header)
    checksum = 0xEF
    for addr, data in segments:
        out += struct.pack("<II", addr, len(data))
        out += data
        checksum ^= _xor(data)
    out += bytes(15 - len(out) % 16)
    out.append(checksum)
    out += hashlib.sha256(out).digest()
    return bytes(out)


def _xor(data: bytes) -> int:
    """XOR of all bytes of ``data``: as one big integer, folded in halves down to a byte."""
    x, nbytes = int.from_bytes(data, "little"), len(data)
    while nbytes > 1:
        half = (nbytes + 1) // 2
        x = (x & ((1 << (8 * half)) - 1)) ^ (x >> (8 * half))
        nbytes = half
    return x


def problem(data: bytes, slot_size: int | None = None) -> str | None:
    """Why the bootloader would refuse ``data``, or None when it is a valid app image."""
    if len(data) < 24 or data[0] != MAGIC:
        return "not an ESP32 app image (no 0xE9 header)"
    count = data[1]
    if not 0 < count <= 16:
        return f"bad segment count {count}"
    chip = struct.unpack_from("<H", data, 12)[0]
    if chip != _CHIP_ESP32:
        return f"built for chip id {chip}, not the ESP32"
    pos, checksum = 24, 0xEF
    for i in range(count):
        if pos + 8 > len(data):
            return "truncated (segment header)"
        _, n = struct.unpack_from("<II", data, pos)
        pos += 8
        if pos + n > len(data):
            return f"truncated (segment {i})"
        seg = data[pos : pos + n]
        if i == 0 and (n < 4 or struct.unpack_from("<I", seg)[0] != DESC_MAGIC):
            return "no app descriptor in the first segment"
        checksum ^= _xor(seg)
        pos += n
    pos += 15 - pos % 16
    if pos >= len(data):
        return "truncated (checksum)"
    if data[pos] != checksum:
        return "checksum mismatch"
    pos += 1
    if data[23] == 1:
        if data[pos : pos + 32] != hashlib.sha256(data[:pos]).digest():
            return "appended SHA-256 mismatch"
        pos += 32
    if slot_size is not None and len(data) > slot_size:
        return f"{len(data)} bytes do not fit a {slot_size}-byte OTA slot"
    return None


def check_app_image(data: bytes, slot_size: int | None = None) -> None:
    """Raise JobsctlError saying why ``data`` is not a bootable ESP32 app image."""
    why = problem(data, slot_size)
    if why is not None:
        raise JobsctlError(f"invalid app image: {why}")


def read_app_version(data: bytes) -> str:
    if len(data) < DESC_OFFSET + 48 or struct.unpack_from("<I", data, DESC_OFFSET)[0] != DESC_MAGIC:
        raise JobsctlError("invalid app image: no app descriptor")
    raw = data[DESC_OFFSET + 16 : DESC_OFFSET + 48]
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def read_secure_version(data: bytes) -> int:
    read_app_version(data)  # the same descriptor checks
    return int(struct.unpack_from("<I", data, DESC_OFFSET + 4)[0])


# ---------------------------------------------------------------- signing (sig-sha256-ecdsa)


def keygen(private_path: Path) -> Path:
    """An ECDSA P-256 key pair: PEM private key (0600) and ``<stem>.pub.pem`` next to it."""
    private_path = Path(private_path)
    if private_path.exists():
        raise JobsctlError(f"{private_path} exists; not overwriting a signing key")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = public_key_path(private_path)
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pub


def public_key_path(private_path: Path) -> Path:
    name = Path(private_path).name
    stem = name[:-4] if name.endswith(".pem") else name
    return Path(private_path).with_name(stem + ".pub.pem")


def _private_key(key_path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
    except OSError as exc:
        raise JobsctlError(f"cannot read {key_path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise JobsctlError(f"{key_path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise JobsctlError(f"{key_path} is not an ECDSA P-256 key")
    return key


def sign(data: bytes, key_path: Path) -> str:
    """Base64 of the DER ECDSA P-256 signature over SHA-256 of ``data``."""
    sig = _private_key(key_path).sign(data, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(sig).decode()


def verify(data: bytes, signature: str, public_pem: bytes) -> bool:
    key = serialization.load_pem_public_key(public_pem)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(base64.b64decode(signature), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------- simulated flash


def init_sim_flash(
    board_dir: Path,
    version: str = "1.0.0",
    partition_size: int = SLOT_SIZE,
    secure_version: int = 0,
) -> None:
    """A freshly flashed board: ``version`` in ota_0 (valid, booted), ota_1 erased.

    Leaves existing flash alone (a board keeps its flash across runs).
    """
    flash = Path(board_dir) / "flash"
    if (flash / "otadata.json").exists():
        return
    if partition_size % BLOCK:
        raise JobsctlError("the partition size must be a multiple of 4096")
    flash.mkdir(parents=True, exist_ok=True)
    image = build_app_image(version, size=64 * 1024, secure_version=secure_version)
    check_app_image(image, partition_size)
    with (flash / "ota_0.bin").open("wb") as f:
        f.write(image)
        f.write(b"\xff" * (partition_size - len(image)))
    with (flash / "ota_1.bin").open("wb") as f:
        f.truncate(0)
        chunk = b"\xff" * (1 << 20)
        left = partition_size
        while left:
            f.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
    state = {"boot": "ota_0", "running": "ota_0", "state": {"ota_0": "VALID", "ota_1": "EMPTY"}}
    (flash / "otadata.json").write_text(json.dumps(state))


def slot_image(board_dir: Path, label: str) -> bytes:
    """The image in a simulated slot, cut at its end (for tests and tools)."""
    data = (Path(board_dir) / "flash" / f"{label}.bin").read_bytes()
    return data
