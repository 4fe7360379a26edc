# Unix-port stand-in for the firmware's `esp32` module: the OTA partitions of a simulated board.
#
# The board's folder is the process's current directory; its flash is in flash/:
#   flash/ota_0.bin, flash/ota_1.bin   the two app slots (erased bytes are 0xFF)
#   flash/otadata.json                 {"boot": label, "running": label, "state": {label: ...}}
# Image states are ESP-IDF's: EMPTY (no image written since erase), NEW (set_boot done, not yet
# booted), PENDING_VERIFY (booted once, not confirmed), VALID, ABORTED (not confirmed before the
# next reset: the bootloader rolled back), INVALID.
#
# What must behave like the hardware, because the device's OTA code runs unchanged on both:
# - writeblocks(block, buf) erases the 4096-byte blocks it touches, then writes; with an offset
#   it does not erase, and NOR flash can only clear bits, so the result is old & new;
# - set_boot() validates the image as ESP-IDF does (header, segments within the slot, checksum,
#   appended SHA-256, app descriptor) and raises OSError(-5379), ESP_ERR_OTA_VALIDATE_FAILED;
# - the bootloader (_power_on, run by sim/boardrun.py before boot.py) boots a NEW image once as
#   PENDING_VERIFY, and rolls back to the other slot if it is still PENDING_VERIFY at the next
#   power-on; an image that does not validate is never booted.
import json
import os

from micropython import const

_BLOCK = const(4096)
_DIR = "flash"
_OTADATA = "flash/otadata.json"
_LABELS = ("ota_0", "ota_1")
_APP_BASE = const(0x10000)
_VALIDATE_FAILED = const(-5379)  # ESP_ERR_OTA_VALIDATE_FAILED (0x1503)
_DESC_MAGIC = const(0xABCD5432)

# esp32.idf_heap_info: the board's port models the ESP-IDF heap (firmware/board/_board,
# docs/board-model.md) and answers for HEAP_DATA as the firmware does, one (total, free,
# largest free block, minimum free) tuple per region; no executable heap is modelled.
HEAP_DATA = const(4)  # MALLOC_CAP_8BIT
HEAP_EXEC = const(1)  # MALLOC_CAP_EXEC


def idf_heap_info(capabilities):
    try:
        from _board import idf_heap_info as info
    except ImportError:  # a port without the board model
        return []
    return info() if capabilities & HEAP_DATA else []


_running = None  # the label the bootloader started in this process
# One open file per slot for the life of the process, and a slot's first write noted once: a
# block write then allocates nothing, like esp_partition_write, so the device's download loop
# can be checked under micropython.heap_lock() with the flash in it. The Unix port's files are
# unbuffered (write() system calls), so a kill -9 loses nothing that a write returned for.
_files = {}
_touched_labels = set()
# Scratch for the image checks and erases, made at import (power-on): on a board these run in
# ESP-IDF's C code and memory, never in the MicroPython heap, so the stand-in must not need a
# large block of the application's heap either (a fragmented heap would fail where a board works).
_SCRATCH = const(512)
_buf = bytearray(_SCRATCH)
_ff = b"\xff" * _SCRATCH


def _fill_ff(f, n):
    # n bytes of 0xFF (erased NOR flash) at f's position, from the scratch.
    while n:
        k = min(n, _SCRATCH)
        f.write(_ff if k == _SCRATCH else memoryview(_ff)[:k])
        n -= k


def _path(label):
    return "%s/%s.bin" % (_DIR, label)


def _load():
    try:
        with open(_OTADATA) as f:
            return json.load(f)
    except OSError:
        raise OSError(2, "no simulated flash here (make one with jobsctl.image.init_sim_flash)")


def _save(d):
    # Like ESP-IDF's two otadata sectors: the old record stays valid until the new is complete.
    tmp = _OTADATA + ".tmp"
    with open(tmp, "w") as f:
        json.dump(d, f)
    os.rename(tmp, _OTADATA)


def _size(label):
    return os.stat(_path(label))[6]


def _state(label):
    # Simulation only (tests): the image state of a slot.
    return _load()["state"].get(label, "EMPTY")


class Partition:
    BOOT = const(0)
    RUNNING = const(1)
    TYPE_APP = const(0)
    TYPE_DATA = const(1)

    def __init__(self, id, block_size=4096):
        if block_size != _BLOCK:
            raise ValueError("block_size must be 4096 here")
        if id == Partition.RUNNING:
            label = _running or _load().get("running")
        elif id == Partition.BOOT:
            label = _load()["boot"]
        else:
            label = id
        if label not in _LABELS:
            raise ValueError("partition not found")
        self._label = label
        self._size = _size(label)

    @staticmethod
    def find(type=TYPE_APP, subtype=-1, label=None):
        if type != Partition.TYPE_APP:
            return []
        out = []
        for i, name in enumerate(_LABELS):
            if (label is None or label == name) and subtype in (-1, 0x10 + i):
                out.append(Partition(name))
        return out

    def info(self):
        i = _LABELS.index(self._label)
        addr = _APP_BASE + sum(_size(n) for n in _LABELS[:i])
        return (Partition.TYPE_APP, 0x10 + i, addr, self._size, self._label, False)

    def __repr__(self):
        return (
            "<Partition type=0, subtype=%d, address=%d, size=%d, label=%s, encrypted=0>"
            % (self.info()[1:5])
        )

    def get_next_update(self):
        return Partition(_LABELS[1 - _LABELS.index(self._label)])

    def _check(self, start, n):
        if start < 0 or start + n > self._size:
            raise OSError(22)  # EINVAL, like esp_partition_* beyond the partition

    def _file(self):
        f = _files.get(self._label)
        if f is None:
            f = _files[self._label] = open(_path(self._label), "r+b")
        return f

    def readblocks(self, block, buf, offset=0):
        start = block * _BLOCK + offset
        self._check(start, len(buf))
        f = self._file()
        f.seek(start)
        f.readinto(buf)

    def writeblocks(self, block, buf, offset=None):
        n = len(buf)
        if offset is None:
            # Erase every block the write touches, then program: untouched bytes end 0xFF.
            start = block * _BLOCK
            self._check(start, n)
            span = (n + _BLOCK - 1) // _BLOCK * _BLOCK
            f = self._file()
            f.seek(start)
            f.write(buf)
            _fill_ff(f, span - n)
        else:
            start = block * _BLOCK + offset
            self._check(start, n)
            old = bytearray(n)
            f = self._file()
            f.seek(start)
            f.readinto(old)
            for i in range(n):
                old[i] &= buf[i]
            f.seek(start)
            f.write(old)
        self._touched()

    def ioctl(self, op, arg=0):
        if op in (1, 2, 3):  # init, deinit, sync
            return 0
        if op == 4:  # block count
            return self._size // _BLOCK
        if op == 5:  # block size
            return _BLOCK
        if op == 6:  # erase one block
            self._check(arg * _BLOCK, _BLOCK)
            f = self._file()
            f.seek(arg * _BLOCK)
            _fill_ff(f, _BLOCK)
            _touched_labels.discard(self._label)  # an erase always updates otadata
            self._touched()
            return 0
        return None

    def _touched(self):
        # Writing into a slot makes whatever image it held unbootable until set_boot again.
        if self._label in _touched_labels:
            return
        _touched_labels.add(self._label)
        d = _load()
        if d["state"].get(self._label, "EMPTY") != "EMPTY" and self._label != d.get("running"):
            d["state"][self._label] = "EMPTY"
            if d["boot"] == self._label:
                d["boot"] = d.get("running") or d["boot"]
            _save(d)

    def set_boot(self):
        _touched_labels.discard(self._label)  # a write after this must mark it EMPTY again
        if not _valid(self._label):
            raise OSError(_VALIDATE_FAILED, "ESP_ERR_OTA_VALIDATE_FAILED")
        d = _load()
        d["boot"] = self._label
        if self._label != d.get("running"):
            d["state"][self._label] = "NEW"
        _save(d)

    @staticmethod
    def mark_app_valid_cancel_rollback():
        d = _load()
        d["state"][d["running"]] = "VALID"
        _save(d)

    @staticmethod
    def mark_app_invalid_rollback_and_reboot():
        d = _load()
        other = _LABELS[1 - _LABELS.index(d["running"])]
        if d["state"].get(other) != "VALID":
            raise OSError(_VALIDATE_FAILED, "no valid image to roll back to")
        d["state"][d["running"]] = "INVALID"
        d["boot"] = other
        _save(d)
        import machine

        machine.reset()


# ---------------------------------------------------------------- image validation (ESP-IDF)


def _u32(b, i):
    return b[i] | b[i + 1] << 8 | b[i + 2] << 16 | b[i + 3] << 24


def _valid(label):
    import hashlib

    size = _size(label)
    buf = _buf
    h = hashlib.sha256()
    with open(_path(label), "rb") as f:
        hdr = f.read(24)
        if len(hdr) < 24 or hdr[0] != 0xE9 or not 0 < hdr[1] <= 16:
            return False
        if hdr[12] | hdr[13] << 8:  # chip id: 0 is the ESP32
            return False
        h.update(hdr)
        pos = 24
        acc = 0  # XOR of every segment byte, folded to one byte at the end
        for seg in range(hdr[1]):
            sh = f.read(8)
            if len(sh) < 8:
                return False
            h.update(sh)
            n = _u32(sh, 4)
            pos += 8
            if pos + n > size:
                return False
            left = n
            first = True
            while left:
                k = f.readinto(buf) if left >= _SCRATCH else f.readinto(memoryview(buf)[:left])
                if not k:
                    return False
                chunk = memoryview(buf)[:k]
                if seg == 0 and first:
                    if k < 4 or _u32(buf, 0) != _DESC_MAGIC:
                        return False
                first = False
                h.update(chunk)
                acc ^= int.from_bytes(chunk, "little")
                left -= k
            pos += n
        acc = _fold(acc)
        pad = 15 - pos % 16
        tail = f.read(pad + 1)
        if len(tail) < pad + 1:
            return False
        h.update(tail)
        if tail[pad] != 0xEF ^ acc:
            return False
        if hdr[23] == 1:
            if f.read(32) != h.digest():
                return False
    return True


def _fold(x):
    # XOR of the bytes of x (< 2**(8*_SCRATCH)): fold the upper half onto the lower, 9 times.
    half = _SCRATCH * 4
    while half >= 8:
        x = (x & ((1 << half) - 1)) ^ (x >> half)
        half //= 2
    return x


# ---------------------------------------------------------------- the bootloader


def _power_on():
    # What the second-stage bootloader does with CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE.
    global _running
    d = _load()
    boot = d["boot"]
    other = _LABELS[1 - _LABELS.index(boot)]
    st = d["state"]
    if st.get(boot) == "PENDING_VERIFY":
        # Booted once and never confirmed: give up on it, go back to the last valid image.
        st[boot] = "ABORTED"
        boot, other = other, boot
    elif st.get(boot) == "NEW":
        st[boot] = "PENDING_VERIFY"
    if st.get(boot) in ("ABORTED", "INVALID", "EMPTY") or not _valid(boot):
        if st.get(other) in ("VALID", "PENDING_VERIFY") and _valid(other):
            boot = other
        else:
            raise RuntimeError("no bootable image in %s" % _DIR)
    d["boot"] = boot
    d["running"] = boot
    _save(d)
    _running = boot


# ---------------------------------------------------------------- NVS (non-volatile storage)


def NVS(namespace):
    # esp32.NVS(namespace), as the firmware has it. The stand-in lives in sim/esp32nvs.py and is
    # imported on first use: on the Unix port this module's bytecode sits in the heap, and a
    # board that never touches NVS must not pay for it (the firmware's is C, outside the heap).
    from esp32nvs import NVS as _NVS

    return _NVS(namespace)
