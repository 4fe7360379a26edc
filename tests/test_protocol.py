"""The agent's protocol core (lib/iotjobs/protocol.py), checked on the MicroPython Unix port.

The checks live in tests/device/protocol_checks.py and run in one device process under a
64 KB heap; each becomes its own test here so that a failure names the behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

import upy

CHECKS = Path(__file__).parent / "device" / "protocol_checks.py"
NAMES = re.findall(r"^def (t_\w+)\(", CHECKS.read_text(), re.M)


@pytest.fixture(scope="module")
def results(micropython: Callable[..., upy.Result]) -> dict[str, str]:
    r = micropython(script=CHECKS, heapsize="64k").check()
    out: dict[str, str] = {}
    for line in r.out.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASS", "FAIL"):
            name, _, why = rest.partition(" ")
            out[name] = word + (" " + why if why else "")
    return out


@pytest.mark.parametrize("name", NAMES)
def test_protocol_on_the_unix_port(results: dict[str, str], name: str) -> None:
    assert results.get(name) == "PASS", results.get(name, "did not run")


def test_every_check_ran(results: dict[str, str]) -> None:
    assert sorted(results) == sorted(NAMES)
