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


def test_an_import_back_in_a_hot_path_fails_the_device_check(tmp_path):
    # The import that cost a filesystem stat per OTA block: agent._diff, called from the
    # download loop through Context.progress_due and Context.tick (iotjobs.context).
    import shutil

    from jobsctl import devcheck as dc

    lib = tmp_path / "lib"
    shutil.copytree(dc.ROOT / "lib", lib)
    assert dc.hot_imports(lib) == []
    agent = lib / "iotjobs" / "agent.py"
    text = agent.read_text()
    assert "def _diff(a, b):\n" in text
    agent.write_text(text.replace("def _diff(a, b):\n", "def _diff(a, b):\n    import time\n", 1))
    problems = dc.hot_imports(lib)
    assert problems and all("agent.py:" in p and "import time in _diff" in p for p in problems)
    assert any("reached from _diff" in p for p in problems)
    # and one in the MQTT read path, two calls down from the guard's read()
    guard = lib / "iotjobs" / "transport.py"
    text = guard.read_text()
    guard.write_text(
        text.replace(
            "        for _, ev in self._poll.ipoll(",
            "        import select\n\n        for _, ev in self._poll.ipoll(",
            1,
        )
    )
    assert any("import select in _Guard.ready" in p for p in dc.hot_imports(lib))


def test_a_renamed_hot_function_is_reported_not_skipped(tmp_path):
    import shutil

    from jobsctl import devcheck as dc

    lib = tmp_path / "lib"
    shutil.copytree(dc.ROOT / "lib", lib)
    fetch = lib / "iotjobs" / "fetch.py"
    fetch.write_text(
        fetch.read_text().replace("def blocks(", "def blocks2(").replace("blocks(", "blocks2(")
    )
    assert any("hot path blocks not found" in p for p in dc.hot_imports(lib))


def test_only_the_listed_rare_path_loader_may_import_under_a_hot_path(tmp_path):
    # agent._rare imports iotjobs.mishap (oversize messages, memory trouble) on purpose and is
    # reached from Agent._on_msg; the same import in an unlisted helper is reported.
    import shutil

    from jobsctl import devcheck as dc

    lib = tmp_path / "lib"
    shutil.copytree(dc.ROOT / "lib", lib)
    agent = lib / "iotjobs" / "agent.py"
    text = agent.read_text()
    assert "def _rare(fn, *args):\n" in text and "from iotjobs import mishap" in text
    assert dc.hot_imports(lib) == []
    agent.write_text(text.replace("def _rare(fn, *args):", "def _rarely(fn, *args):", 1))
    agent.write_text(agent.read_text().replace("_rare(", "_rarely("))
    assert any("import mishap in _rarely" in p for p in dc.hot_imports(lib))


def test_an_esp32_import_outside_the_board_module_fails_the_device_check(tmp_path):
    # Hardware comes in through iotjobs.board; only the modules devcheck.ESP32_IMPORTERS
    # lists (each with its reason) may import esp32.
    import shutil

    from jobsctl import devcheck as dc

    assert set(dc.ESP32_IMPORTERS) >= {"iotjobs/board.py"}
    assert all(dc.ESP32_IMPORTERS.values())  # a reason for each
    lib = tmp_path / "lib"
    shutil.copytree(dc.ROOT / "lib", lib)
    assert dc.esp32_imports(lib) == []
    ota = lib / "iotjobs" / "ota.py"
    text = ota.read_text()
    assert "def _slot(ctx):\n" in text
    ota.write_text(
        text.replace(
            "def _slot(ctx):\n",
            "def _slot(ctx):\n    import esp32\n\n    esp32.Partition(ctx.state['slot'])\n",
            1,
        )
    )
    (tmp_path / "main.py").write_text("from esp32 import Partition\n")
    problems = dc.esp32_imports(lib)
    assert len(problems) == 2, problems
    assert any(p.startswith("lib/iotjobs/ota.py:") and "imports esp32" in p for p in problems)
    assert any(p.startswith("main.py:1:") for p in problems)
