"""The configuration reference (docs/configuration.md) against its owners,
lib/iotjobs/config.py and settings.py: every key, its type, default and bounds, read from the
device code itself under the Unix port."""

from __future__ import annotations

import json
import re
from typing import Any

from jobsctl.checkout import ROOT

DOC = ROOT / "docs" / "configuration.md"

DUMP = """
import json
from iotjobs import config, settings
cfg = config.check({"thing_name": "T", "endpoint": "E", "ca_file": "C", "cert_file": "K",
                    "key_file": "X"})
print(json.dumps({"defaults": cfg, "bounds": settings._BOUNDS, "levels": settings.LEVELS,
                  "settings": list(settings.DEFAULTS), "required": config._REQUIRED,
                  "optional": {k: t.__name__ for k, t in config._OPTIONAL.items()}}))
"""
TYPES = {"str": "string", "int": "int", "bool": "bool", "dict": "object"}


def _rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| `([a-z_]+)` \|(.*)\|$", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} is listed twice"
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_configuration_reference_matches_config_py(micropython: Any) -> None:
    facts = json.loads(micropython(DUMP).check().out)
    rows = _rows()
    keys = set(facts["required"]) | set(facts["optional"]) | set(facts["settings"])
    assert set(rows) == keys, "docs/configuration.md and config.py list different keys"
    given = {"T": "`thing_name`", "E": "`endpoint`"}
    for key, (kind, default, *rest) in rows.items():
        if key in facts["required"]:
            assert (kind, default) == ("string", "required"), key
            continue
        value = facts["defaults"].get(key)
        if key in facts["optional"]:
            assert kind == TYPES[facts["optional"][key]], key
        else:
            assert kind == TYPES[type(value).__name__], key
        if key not in facts["defaults"] and kind == "bool":  # absent: cfg.get() is falsy
            assert default == "`false`", key
        elif key not in facts["defaults"]:  # no default, or another key's value (code elsewhere)
            assert default == "none" or default.strip("`") in keys, (key, default)
        elif isinstance(value, str) and value in given:
            assert default == given[value], key
        else:
            assert default == f"`{json.dumps(value)}`", (key, default, value)
        if key in facts["bounds"]:
            lo, hi = facts["bounds"][key]
            assert rest[0] == f"{lo}-{hi}", (key, rest[0])
        elif key == "log_level":
            assert rest[0] == ", ".join(f"`{level}`" for level in facts["levels"])


def test_docs_name_only_keys_that_exist(micropython: Any) -> None:
    # Every `config.json` key the guides mention is a real key.
    facts = json.loads(micropython(DUMP).check().out)
    keys = set(facts["required"]) | set(facts["optional"]) | set(facts["settings"])
    for doc in (ROOT / "docs" / "real-hardware.md", ROOT / "README.md"):
        for name in re.findall(r'"([a-z_]+)": ?(?:true|false|\d|")', doc.read_text()):
            if name.endswith(("_file", "_ms", "_s")) or name.startswith(("wifi_", "ota_")):
                assert name in keys, f"{doc.name} names {name!r}, which config.py does not know"
