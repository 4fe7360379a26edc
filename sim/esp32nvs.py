# Unix-port stand-in for the firmware's esp32.NVS (reached through sim/esp32.py's NVS()).
#
# esp32.NVS(namespace) as the firmware has it: get_i32/set_i32, get_blob/set_blob, erase_key,
# commit. Changes are seen by this object at once but reach flash only at commit(), as with
# ESP-IDF's nvs_commit: a reset before commit() loses them. Errors are the firmware's
# OSError(-code, "ESP_ERR_NVS_..."). The flash is flash/nvs.json on the simulated board
# ({namespace: {key: ["i32", n] or ["blob", hex]}}), written atomically (tmp + rename), so it
# survives resets and reflashing of the app slots; a file that cannot be parsed is a corrupted
# NVS partition: every call raises ESP_ERR_NVS_CORRUPT_KEY_PART (tests use this).
import json
import os

from micropython import const

_NVS_FILE = "flash/nvs.json"
_NVS_NOT_FOUND = const(0x1102)
_NVS_TYPE_MISMATCH = const(0x1103)
_NVS_INVALID_NAME = const(0x1106)
_NVS_KEY_TOO_LONG = const(0x1109)
_NVS_INVALID_LENGTH = const(0x110C)
_NVS_CORRUPT = const(0x1117)
_NVS_NAMES = {
    _NVS_NOT_FOUND: "ESP_ERR_NVS_NOT_FOUND",
    _NVS_TYPE_MISMATCH: "ESP_ERR_NVS_TYPE_MISMATCH",
    _NVS_INVALID_NAME: "ESP_ERR_NVS_INVALID_NAME",
    _NVS_KEY_TOO_LONG: "ESP_ERR_NVS_KEY_TOO_LONG",
    _NVS_INVALID_LENGTH: "ESP_ERR_NVS_INVALID_LENGTH",
    _NVS_CORRUPT: "ESP_ERR_NVS_CORRUPT_KEY_PART",
}


def _nvs_err(code):
    return OSError(-code, _NVS_NAMES[code])


def _nvs_read():
    try:
        with open(_NVS_FILE) as f:
            raw = f.read()
    except OSError:
        return {}
    try:
        d = json.loads(raw)
    except ValueError:
        raise _nvs_err(_NVS_CORRUPT)
    if not isinstance(d, dict):
        raise _nvs_err(_NVS_CORRUPT)
    return d


class NVS:
    def __init__(self, namespace):
        if not isinstance(namespace, str) or not 0 < len(namespace) <= 15:
            raise _nvs_err(_NVS_INVALID_NAME)
        self._ns = namespace
        self._pending = dict(_nvs_read().get(namespace, {}))

    def _key(self, key):
        if not key:
            raise _nvs_err(_NVS_INVALID_NAME)
        if len(key) > 15:
            raise _nvs_err(_NVS_KEY_TOO_LONG)
        return key

    def _get(self, key, kind):
        v = self._pending.get(self._key(key))
        if v is None:
            raise _nvs_err(_NVS_NOT_FOUND)
        if v[0] != kind:
            raise _nvs_err(_NVS_TYPE_MISMATCH)
        return v[1]

    def set_i32(self, key, value):
        if not -0x80000000 <= value <= 0x7FFFFFFF:
            raise OverflowError("overflow converting long int to machine word")
        self._pending[self._key(key)] = ["i32", value]

    def get_i32(self, key):
        return self._get(key, "i32")

    def set_blob(self, key, value):
        self._pending[self._key(key)] = ["blob", bytes(value).hex()]

    def get_blob(self, key, buffer):
        data = bytes.fromhex(self._get(key, "blob"))
        if len(buffer) < len(data):
            raise _nvs_err(_NVS_INVALID_LENGTH)
        buffer[: len(data)] = data
        return len(data)

    def erase_key(self, key):
        if self._pending.pop(self._key(key), None) is None:
            raise _nvs_err(_NVS_NOT_FOUND)

    def commit(self):
        d = _nvs_read()
        d[self._ns] = self._pending
        tmp = _NVS_FILE + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(d))
        os.rename(tmp, _NVS_FILE)
        self._pending = dict(self._pending)
