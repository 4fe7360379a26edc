"""Packaging for MicroPython users (package.json for mip) and the firmware build files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.rawrepl import RawReplBridge
from jobsctl.checkout import ROOT
from jobsctl.deploy import package_json

MPREMOTE = str(Path(sys.executable).parent / "mpremote")


def _package() -> dict[str, Any]:
    data = json.loads((ROOT / "package.json").read_text())
    assert isinstance(data, dict)
    return data


def test_package_json_lists_every_device_module_and_nothing_else() -> None:
    modules = sorted(
        p.relative_to(ROOT / "lib").as_posix()
        for p in (ROOT / "lib" / "iotjobs").rglob("*.py")
        if "__pycache__" not in p.parts
    )
    urls = _package()["urls"]
    assert sorted(target for target, _ in urls) == modules, (
        "package.json is stale: run `cd tools && ../.venv/bin/python -m jobsctl.deploy "
        "package-json`"
    )
    for target, url in urls:
        # relative to package.json, so `mip install github:OWNER/REPO[@TAG]` needs no owner
        assert url == f"lib/{target}" and (ROOT / url).is_file()
    assert _package() == package_json(ROOT)


def test_package_json_is_versioned_with_the_project_and_depends_on_umqtt_simple() -> None:
    pkg = _package()
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and pkg["version"] == version[1]
    assert pkg["deps"] == [["umqtt.simple", "latest"]]
    assert set(pkg) == {"urls", "deps", "version"}


def test_mpremote_mip_installs_the_package_files_onto_a_board(
    sim_board: RawReplBridge, tmp_path: Path
) -> None:
    # The same urls, installed from the local checkout; the umqtt.simple dependency is left out
    # because it would be fetched from micropython.org (official firmware has it frozen in).
    local = dict(_package(), deps=[])
    # mip resolves a relative url against package.json's folder, as it does for github:
    local["urls"] = [[t, os.path.relpath(ROOT / u, tmp_path)] for t, u in local["urls"]]
    manifest = tmp_path / "package.json"
    manifest.write_text(json.dumps(local))
    r = subprocess.run(
        [MPREMOTE, "connect", sim_board.port, "mip", "install", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    for target, url in _package()["urls"]:
        landed = sim_board.board_dir / "lib" / target
        assert landed.read_bytes() == (ROOT / url).read_bytes(), target


def test_firmware_manifest_includes_the_port_requires_umqtt_and_freezes_the_library() -> None:
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def record(name: str) -> Any:
        return lambda *a, **kw: calls.append((name, a, kw))

    source = (ROOT / "firmware" / "manifest.py").read_text()
    exec(
        compile(source, "manifest.py", "exec"),
        {n: record(n) for n in ("include", "require", "package", "freeze", "module")},
    )
    assert ("include", ("$(PORT_DIR)/boards/manifest.py",), {}) in calls
    assert ("require", ("umqtt.simple",), {}) in calls
    pkg = [c for c in calls if c[0] == "package"]
    assert len(pkg) == 1 and pkg[0][1] == ("iotjobs",)
    base = (ROOT / "firmware" / pkg[0][2]["base_path"]).resolve()
    assert (base / "iotjobs").is_dir() and base == ROOT / "lib"


def test_make_firmware_without_esp_idf_says_what_is_missing_in_one_line(tmp_path: Path) -> None:
    # a PATH with the basic tools but no idf.py
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("bash", "dirname", "env"):
        for d in ("/usr/bin", "/bin"):
            if (Path(d) / tool).exists():
                (bindir / tool).symlink_to(Path(d) / tool)
                break
    env = dict(os.environ, PATH=str(bindir))
    r = subprocess.run(
        [str(bindir / "bash"), str(ROOT / "firmware" / "build.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "ESP-IDF is missing (no idf.py on PATH)" in r.stderr
