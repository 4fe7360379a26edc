"""The device-code check catches what only a board would otherwise find."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def devcheck(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobsctl.devcheck", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_misspelt_esp32_partition_method_fails_the_device_check(tmp_path):
    bad = tmp_path / "bad_ota.py"
    bad.write_text(
        "import esp32\n\n"
        "def next_slot():\n"
        "    running = esp32.Partition('ota_0')\n"
        "    return running.get_next_updat()\n"
    )
    r = devcheck(bad)
    assert r.returncode == 1
    assert "get_next_updat" in r.stdout and "get_next_update" in r.stdout


def test_a_correct_esp32_partition_use_passes_the_device_check(tmp_path):
    good = tmp_path / "good_ota.py"
    good.write_text(
        "import esp32\n\n"
        "def next_slot():\n"
        "    running = esp32.Partition('ota_0')\n"
        "    return running.get_next_update()\n"
    )
    r = devcheck(good)
    assert r.returncode == 0, r.stdout


def test_syntax_micropython_cannot_compile_fails_the_device_check(tmp_path):
    bad = tmp_path / "bad_syntax.py"
    bad.write_text("def f(x):\n    match x:\n        case 1:\n            return 2\n")
    r = devcheck(bad)
    assert r.returncode == 1
    assert "mpy-cross" in r.stdout
