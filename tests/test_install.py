"""`pip install .` into a fresh venv outside the checkout gives a working jobsctl.

The package carries no test or bench tools and finds nothing through the checkout: the
installed `jobsctl --help`, `jobsctl image build` and `jobsctl serve` (started, asked, stopped)
run from a folder that is not the checkout, with nothing of the checkout on the path. The venv
installs with the checkout's pinned versions as constraints, from pip's cache where it can.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_stack import served

from jobsctl.checkout import ROOT
from jobsctl.stack import iot_client


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JOBSCTL_CHECKOUT")}
    env.pop("VIRTUAL_ENV", None)
    return env


# A fresh venv and every runtime dependency: about a minute from pip's cache on 2 cores.
@pytest.mark.slow
def test_pip_install_outside_the_checkout_gives_a_working_jobsctl(tmp_path: Path) -> None:
    venv, work, src = tmp_path / "venv", tmp_path / "work", tmp_path / "src"
    work.mkdir()
    # The package's own files only (a build writes build/ beside pyproject.toml: not ours).
    shutil.copytree(
        ROOT / "tools" / "jobsctl",
        src / "tools" / "jobsctl",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    shutil.copy(ROOT / "pyproject.toml", src)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "requirements.txt"), "."],
        cwd=src,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    jobsctl = str(venv / "bin" / "jobsctl")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [jobsctl, *args], cwd=work, env=_env(), capture_output=True, text=True, timeout=120
        )

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import jobsctl; print(jobsctl.__file__)"],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(venv)), where  # the installed copy, not the checkout's
    for tool in ("rawrepl", "faultproxy", "bench", "bench_service"):  # the product alone
        assert not (Path(where).parent / f"{tool}.py").exists()

    helped = run("--help")
    assert helped.returncode == 0 and "serve" in helped.stdout and "image" in helped.stdout

    built = run("image", "build", "--version", "2.3.4", "-o", "app.bin")
    assert built.returncode == 0, built.stderr
    info = run("image", "info", "app.bin")
    assert info.returncode == 0 and "2.3.4" in info.stdout, info.stdout + info.stderr

    state = work / "state"
    with served(state, jobsctl=Path(jobsctl), cwd=work, env=_env()) as endpoints:
        created = run("thing", "create", "--state-dir", str(state), "installed-1")
        assert created.returncode == 0, created.stderr
        iot = iot_client(endpoints)
        assert [t["thingName"] for t in iot.list_things()["things"]] == ["installed-1"]
        # What needs the device code says so in one line instead of looking for it.
        board = run("device", "run", "--state-dir", str(state), "installed-1")
        assert board.returncode == 1 and board.stderr.count("\n") == 1, board.stderr
        assert "needs the project's checkout" in board.stderr
    assert not (state / "endpoints.json").exists()


def test_the_runtime_dependencies_cover_every_import_of_the_package() -> None:
    # The quick half of the above: every third-party module tools/jobsctl imports comes from a
    # distribution [project] dependencies names (not only from the dev extra), and the dev
    # extra holds nothing the package imports.
    import ast
    import importlib.metadata as md
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[\[<>=; ]", r, maxsplit=1)[0].lower() for r in reqs}

    runtime, dev = names(project["dependencies"]), names(project["optional-dependencies"]["dev"])
    dists = md.packages_distributions()
    imported: dict[str, str] = {}
    for path in (ROOT / "tools" / "jobsctl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top == "jobsctl":
                    continue
                imported[top] = path.name
    assert imported, "no third-party import found: the scan is broken"
    for top, where in sorted(imported.items()):
        owners = {d.lower() for d in dists.get(top, [])}
        assert owners & runtime, f"{where} imports {top} ({owners}): not in [project] dependencies"
        assert not owners & (dev - runtime), f"{where} imports {top}, a dev-only dependency"


def test_jobsctl_checkout_names_the_checkout_for_an_installed_jobsctl(tmp_path: Path) -> None:
    # README: an installed jobsctl runs the device code of the checkout JOBSCTL_CHECKOUT names,
    # and without one says in one line what needs it.
    code = (
        "import jobsctl.checkout as c\n"
        "print(c.ROOT, c.unix_port())\n"
        "try:\n"
        "    c.require('x')\n"
        "except Exception as e:\n"
        "    print(e)\n"
    )
    env = dict(_env(), JOBSCTL_CHECKOUT=str(ROOT))
    named = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert named.stdout.split() == [str(ROOT), str(ROOT / "build" / "micropython")]
    env["JOBSCTL_CHECKOUT"] = str(tmp_path)
    elsewhere = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert elsewhere.returncode == 1 and "needs the project's checkout" in elsewhere.stderr
