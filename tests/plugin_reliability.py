"""Trial counting for the reliability suite (tests/test_reliability.py).

``trials(name, quick)`` gives the number of trials for a fault class: ``quick`` in `make test`,
the full count with ``--reliability-full`` (`make reliability`). ``record(name, ok, why)`` adds a
trial's outcome; the terminal summary prints one table: class, trials, passed, what failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

FULL = {
    "network": 50,
    "mqtt": 20,
    "power": 50,
    "delta-power": 50,
    "server": 10,
    "stream-cut": 30,
    "stream-power": 30,
    "streamfuzz": 1_000,
    "fuzz": 10_000,
    "dataplane": 2_000,
    "controlplane": 2_000,
}
_results: dict[str, list[tuple[bool, str]]] = {}


@pytest.fixture()
def trials(request: pytest.FixtureRequest) -> Callable[[str, int], int]:
    full = bool(request.config.getoption("--reliability-full"))
    return lambda name, quick: FULL.get(name, quick) if full else quick


@pytest.fixture()
def record() -> Callable[[str, bool, str], None]:
    def add(name: str, ok: bool, why: str = "") -> None:
        _results.setdefault(name, []).append((ok, why))

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _results:
        return
    tr = terminalreporter
    tr.section("reliability")
    tr.write_line(f"{'fault class':<12} {'trials':>6} {'passed':>6}  failures")
    for name, outcomes in sorted(_results.items()):
        failed = [why for ok, why in outcomes if not ok]
        passed = len(outcomes) - len(failed)
        tr.write_line(f"{name:<12} {len(outcomes):>6} {passed:>6}  {'; '.join(failed[:3])}")
