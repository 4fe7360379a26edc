"""After the bootloader rolled an OTA back, the job's reason says why when the board knows: a new
image whose boot had no memory for MQTT (the agent reset for a fresh heap, unconfirmed, and the
bootloader went back) is not reported as an image that did not start."""

from __future__ import annotations

from typing import Any

import pytest

BOOTING = """
import asyncio, sys
from iotjobs import otaboot
from iotjobs.agent import Failed

class Slot:
    label = "ota_0"  # the bootloader went back to the old slot

class Board:
    def running_slot(self):
        return Slot()

class Ctx:
    board = Board()
    state = {"slot": "ota_1", "new": "1.1.0", "old": "1.0.0", "step": "booting", "mr": 1}
    def memresets(self):
        return int(sys.argv[1])

try:
    asyncio.run(otaboot.booting(Ctx(), {}))
except Failed as e:
    print(e.args[0])
"""


@pytest.mark.parametrize(
    ("memresets", "reason"),
    [
        ("1", "new firmware 1.1.0 did not start; still running 1.0.0"),
        (
            "2",
            "new firmware 1.1.0 had no memory for the MQTT session before its self-test and was"
            " rolled back; still running 1.0.0",
        ),
    ],
    ids=["bad-image", "memory-reset-after-activation"],
)
def test_a_rollback_after_a_memory_reset_names_memory(
    micropython: Any, memresets: str, reason: str
) -> None:
    r = micropython(BOOTING, args=(memresets,)).check()
    assert r.out.strip() == reason
