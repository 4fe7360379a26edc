"""Trial counting for the reliability suite (tests/test_reliability*.py).

``trials(name, quick)`` gives the number of trials for a fault class: ``quick`` in `make test`,
the full count with ``--reliability-full`` (`make reliability`). ``record(name, ok, why)`` adds a
trial's outcome; ``refused(name)`` counts an input the service refused up front (neither a pass
nor a failure: the input never reached what the trial tests). ``peak_memory(what, pid)`` keeps
the highest resident set (VmHWM) seen of a process. ``seed`` is the run's random seed: every
random choice and every hypothesis run derives from it, a new one each run unless
``--reliability-seed N`` replays one. The terminal summary prints one table (class, trials,
passed, refused, what failed), the seed and the peak memory, under ``-n 2`` too: xdist workers
hand their results to the controller.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

FULL = {
    "network": 50,
    "mqtt": 20,
    "power": 50,
    "delta-power": 50,
    "delta-power-mqtt": 30,
    "server": 10,
    "stream-cut": 30,
    "stream-power": 30,
    "streamfuzz": 1_000,
    "fuzz": 10_000,
    "dataplane": 2_000,
    "controlplane": 2_000,
    "hostile-docs": 300,
    "hostile-dataplane": 1_000,
    "hostile-controlplane": 1_000,
    "identity": 100,
}
# class -> [(outcome, why)], outcome "pass", "fail" or "refused"
_results: dict[str, list[tuple[str, str]]] = {}
_memory: dict[str, int] = {}  # what -> peak resident set, kB
_KEY = "reliability"
_seed_key = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability-seed",
        type=int,
        default=None,
        help="replay the reliability suite's random choices of an earlier run (its seed)",
    )


def pytest_configure(config: pytest.Config) -> None:
    seed = config.getoption("--reliability-seed")
    if seed is None:
        # The controller picks one and hands it to the xdist workers, so that one number
        # replays the whole run.
        worker = getattr(config, "workerinput", None)
        seed = worker["reliability_seed"] if worker else random.SystemRandom().getrandbits(32)
    config.stash[_seed_key] = int(seed)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    node.workerinput["reliability_seed"] = node.config.stash[_seed_key]


@pytest.fixture(scope="session")
def seed(request: pytest.FixtureRequest) -> int:
    return request.config.stash[_seed_key]


@pytest.fixture()
def rng(seed: int, request: pytest.FixtureRequest) -> random.Random:
    """A random.Random of the run's seed and the test's name: replayable on its own."""
    return random.Random(f"{seed}:{request.node.name}")


@pytest.fixture()
def trials(request: pytest.FixtureRequest) -> Callable[[str, int], int]:
    full = bool(request.config.getoption("--reliability-full"))
    return lambda name, quick: FULL.get(name, quick) if full else quick


@pytest.fixture()
def record() -> Callable[[str, bool, str], None]:
    def add(name: str, ok: bool, why: str = "") -> None:
        _results.setdefault(name, []).append(("pass" if ok else "fail", why))

    return add


@pytest.fixture()
def refused() -> Callable[[str], None]:
    def add(name: str) -> None:
        _results.setdefault(name, []).append(("refused", ""))

    return add


def vm_hwm_kb(pid: int) -> int:
    """A process's peak resident set (VmHWM), kB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@pytest.fixture()
def peak_memory() -> Callable[[str, int], int]:
    def note(what: str, pid: int) -> int:
        kb = vm_hwm_kb(pid)
        _memory[what] = max(_memory.get(what, 0), kb)
        return kb

    return note


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = getattr(session.config, "workeroutput", None)
    if out is not None:  # an xdist worker: the controller prints the table
        out[_KEY] = json.dumps({"results": _results, "memory": _memory})


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    raw = getattr(node, "workeroutput", {}).get(_KEY)
    if not raw:
        return
    data = json.loads(raw)
    for name, outcomes in data["results"].items():
        _results.setdefault(name, []).extend((o, why) for o, why in outcomes)
    for what, kb in data["memory"].items():
        _memory[what] = max(_memory.get(what, 0), kb)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _results:
        return
    tr = terminalreporter
    tr.section("reliability")
    tr.write_line(f"{'fault class':<21} {'trials':>6} {'passed':>6} {'refused':>7}  failures")
    for name, outcomes in sorted(_results.items()):
        failed = [why for o, why in outcomes if o == "fail"]
        passed = sum(1 for o, _ in outcomes if o == "pass")
        n_refused = sum(1 for o, _ in outcomes if o == "refused")
        tr.write_line(
            f"{name:<21} {len(outcomes):>6} {passed:>6} {n_refused:>7}  {'; '.join(failed[:3])}"
        )
    for what, kb in sorted(_memory.items()):
        tr.write_line(f"peak memory of {what}: {kb / 1024:.1f} MiB (VmHWM)")
    seed = tr.config.stash[_seed_key]
    tr.write_line(f"seed {seed}: replay with pytest --reliability-seed {seed} (or SEED={seed})")
