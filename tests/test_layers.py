"""The host layer rules (tests/harness/layers.py, run by `make check`) catch a wrong import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import layers
from jobsctl.checkout import ROOT


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    """A checkout with only the package, to break on purpose."""
    shutil.copytree(
        ROOT / "tools" / "jobsctl",
        tmp_path / "tools" / "jobsctl",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return tmp_path


def _add(root: Path, module: str, line: str) -> None:
    path = root / "tools" / "jobsctl" / module
    text = path.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    assert sep, module
    path.write_text(head + sep + line + "\n" + rest)


def test_the_package_as_it_is_keeps_the_layer_rules(copy: Path) -> None:
    problems, checked = layers.check(copy)
    assert problems == [] and checked > 40


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        # the service reaching up into the commands
        ("service/model.py", "from ..commands import thing", "(service) imports jobsctl.commands"),
        # the package importing a test tool
        ("stack.py", "from harness.faultproxy import FaultProxy", "imports harness.faultproxy"),
        # a lower module importing the command line (cli is the top)
        ("things.py", "from .cli import main", "(assembly) imports jobsctl.cli (cli)"),
        # a second owner of the checkout's paths
        ("device.py", "HERE = __file__", "__file__: paths into the checkout"),
        # the state dir's layout spelt out beside statedir
        ("commands/thing.py", 'LAYOUT = "endpoints.json"', "'endpoints.json'"),
    ],
)
def test_a_deliberately_wrong_import_fails_the_check(
    copy: Path, module: str, line: str, expected: str
) -> None:
    _add(copy, module, line)
    problems, _ = layers.check(copy)
    assert len(problems) == 1 and expected in problems[0], problems
    # and `make check` fails on it: the script exits 1 and names the line
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "harness" / "layers.py"), "--root", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and expected in run.stdout, run.stdout
