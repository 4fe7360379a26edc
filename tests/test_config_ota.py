"""The OTA settings of config.json this issue added: ota_protocol, ota_stream_format,
ota_allow_downgrade are checked when the config loads (a bad value never reaches a job)."""

from __future__ import annotations

from typing import Any

SCRIPT = """
from iotjobs import config
base = {"thing_name": "t", "endpoint": "e", "ca_file": "c", "cert_file": "c", "key_file": "k"}
for extra in (
    {"ota_protocol": "ftp"},
    {"ota_stream_format": "xml"},
    {"ota_allow_downgrade": 1},
    {"ota_protocol": "http", "ota_stream_format": "cbor", "ota_allow_downgrade": True},
):
    d = dict(base)
    d.update(extra)
    try:
        c = config.check(d)
        print("ok", c["ota_protocol"], c["ota_stream_format"], c["ota_allow_downgrade"])
    except config.ConfigError as e:
        print("err", e)
"""


def test_ota_settings_are_checked_at_load(micropython: Any) -> None:
    out = micropython(SCRIPT).check().out.splitlines()
    assert out == [
        "err config: ota_protocol must be mqtt or http",
        "err config: ota_stream_format must be json or cbor",
        "err config: ota_allow_downgrade must be a bool",
        "ok http cbor True",
    ]
