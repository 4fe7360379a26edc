"""`jobsctl demo`: the newcomer's first command, end to end (small fleet, config job)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobsctl import image
from jobsctl.checkout import ROOT
from jobsctl.errors import JobsctlError
from jobsctl.stack import Stack

JOBSCTL = Path(sys.executable).parent / "jobsctl"


def test_demo_config_job_succeeds_on_every_device_and_draws_the_timeline(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    args = ["--devices", "2", "--job", "config", "--state-dir", str(state)]
    # On the plain ESP32's memory (the board profile), whatever the default is.
    r = subprocess.run(
        [str(JOBSCTL), "demo", *args, "--profile", "esp32-plain"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 SUCCEEDED" in r.stdout
    png = (state / "rollout.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    # Every board's console was kept for whoever wants to read it.
    for name in ("demo-01", "demo-02"):
        console = (state / "devices" / name / "console.log").read_text()
        assert "SUCCEEDED" in console and "(boot 1, esp32-plain)" in console
    # Everything it started is stopped: the state dir's lock is free again.
    with Stack(state):
        pass


def test_demo_ota_rollout_leaves_every_device_on_the_new_signed_firmware(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    r = subprocess.run(
        [str(JOBSCTL), "demo", "--devices", "2", "--image-size", "300k", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ota job" in r.stdout and "2 SUCCEEDED" in r.stdout
    for name in ("demo-01", "demo-02"):
        board = state / "devices" / name
        running = json.loads((board / "flash" / "otadata.json").read_text())["running"]
        assert image.read_app_version(image.slot_image(board, running)) == "1.1.0"
        assert json.loads((board / "config.json").read_text())["ota_key_file"] == "ota_key.pem"
    # The timeline shows every phase of every board, in order, however quickly it went by.
    timelines = json.loads((state / "rollout.json").read_text())
    for name in ("demo-01", "demo-02"):
        phases = [p for _, p in timelines[name] if p not in ("waiting", "QUEUED", "IN_PROGRESS")]
        assert phases == ["download", "verify", "rebooting", "self-test", "SUCCEEDED"], name
    # The boards' sensor application published through the rollout: readings before the reset
    # and on the new firmware after it, the gap between them shown in the summary.
    readings = json.loads((state / "readings.json").read_text())
    for name in ("demo-01", "demo-02"):
        reset = next(t for t, p in timelines[name] if p == "rebooting")
        assert [t for t in readings[name] if t < reset], readings[name]
        assert [t for t in readings[name] if t > reset], readings[name]
    assert "sensor readings during the rollout" in r.stdout


def test_demo_refuses_a_fleet_size_it_cannot_run(tmp_path: Path) -> None:
    r = subprocess.run(
        [str(JOBSCTL), "demo", "--devices", "0", "--job", "config", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["jobsctl: --devices must be 1-200"]


# --- the state dir: the demo empties only a folder it made, never one a stack holds ------------


def _demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(JOBSCTL), "demo", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=env,
    )


def test_demo_refuses_a_folder_it_did_not_make_and_keeps_the_users_file(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("three years of work")
    r = _demo("--devices", "1", "--job", "config", "--state-dir", str(mine))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "is not a demo folder" in r.stderr, r.stderr
    assert "nothing was deleted" in r.stderr
    assert (mine / "thesis.tex").read_text() == "three years of work"
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_demo_refuses_a_folder_a_running_stack_holds_and_touches_nothing(tmp_path: Path) -> None:
    # A demo folder from an earlier run, now held by a running stack (jobsctl serve on it).
    state = tmp_path / "demo"
    state.mkdir()
    (state / ".jobsctl-demo").write_text("made by `jobsctl demo`\n")
    with Stack(state) as stack:
        (state / "notes.txt").write_text("kept")
        before = sorted(p.relative_to(state) for p in state.rglob("*"))
        r = _demo("--devices", "1", "--job", "config", "--state-dir", str(state))
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1 and "a running stack holds" in r.stderr, r.stderr
        assert sorted(p.relative_to(state) for p in state.rglob("*")) == before
        assert json.loads(stack.endpoints_file.read_text())["state_dir"] == str(state.resolve())
        assert (state / "ca").is_dir() and (state / "notes.txt").read_text() == "kept"
        # ... and the stack still answers.
        assert stack.iot_client().list_jobs()["jobs"] == []
    # A `make serve` folder (no marker) is refused before its lock is even looked at.
    local = tmp_path / "local"
    with Stack(local):
        r = _demo("--devices", "1", "--job", "config", "--state-dir", str(local))
        assert r.returncode == 1 and "is not a demo folder" in r.stderr
        assert (local / "endpoints.json").exists()


def test_demo_reuses_its_own_folder(tmp_path: Path) -> None:
    from jobsctl.demo import MARKER, prepare_state_dir

    state = tmp_path / "demo"
    prepare_state_dir(state)  # new: made and marked
    assert (state / MARKER).is_file()
    (state / "devices" / "demo-01").mkdir(parents=True)
    (state / "rollout.json").write_text("{}")
    prepare_state_dir(state)  # ours: emptied, still marked
    assert sorted(p.name for p in state.iterdir()) == sorted([MARKER, ".stack.lock"])
    # A folder from a demo run before the marker existed: only what a demo writes, timeline
    # included. One more file of the user's, and it is not the demo's to empty.
    old = tmp_path / "old"
    for sub in ("ca", "devices/demo-01", "things", "signing"):
        (old / sub).mkdir(parents=True)
    (old / "rollout.json").write_text("{}")
    (old / "jobs.sqlite3").write_text("")
    (old / "my-notes.txt").write_text("mine")
    with pytest.raises(JobsctlError, match="is not a demo folder"):
        prepare_state_dir(old)
    assert (old / "my-notes.txt").read_text() == "mine" and (old / "ca").is_dir()
    (old / "my-notes.txt").unlink()
    prepare_state_dir(old)
    assert sorted(p.name for p in old.iterdir()) == sorted([MARKER, ".stack.lock"])


# --- the staged rollout the README advertises, and a CI log ----------------------------------


def test_staged_rollout_releases_boards_in_stages_and_updates_every_board(tmp_path: Path) -> None:
    # `jobsctl demo --max-per-minute 2` with the service's minute played in 3 s: 5 boards are
    # released 2, 2, 1. The output goes to a pipe with FORCE_COLOR/TTY_COMPATIBLE set, as in
    # many CI logs: one line per change, never a redrawn table.
    state = tmp_path / "demo"
    env = dict(os.environ, FORCE_COLOR="1", TTY_COMPATIBLE="1")
    args = ["--max-per-minute", "2", "--minute", "3"]
    r = _demo(*args, "--state-dir", str(state), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "5\x1b[0m SUCCEEDED" in r.stdout or "5 SUCCEEDED" in r.stdout
    timelines = json.loads((state / "rollout.json").read_text())
    # When the rollout released each board: its first state after "waiting".
    queued = {name: next(t for t, s in tl if s != "waiting") for name, tl in timelines.items()}
    names = sorted(queued)
    assert all(timelines[n][0][1] == "waiting" for n in names)
    first, second, third = names[:2], names[2:4], names[4:]
    # Each stage starts a (played) minute after the one before, never earlier.
    assert max(queued[n] for n in first) + 2.0 < min(queued[n] for n in second)
    assert max(queued[n] for n in second) + 2.0 < min(queued[n] for n in third)
    for name in names:
        board = state / "devices" / name
        running = json.loads((board / "flash" / "otadata.json").read_text())["running"]
        assert image.read_app_version(image.slot_image(board, running)) == "1.1.0"
    # The log: no cursor movement, and a board's line appears only when something changed.
    assert "\x1b[1A" not in r.stdout and "\x1b[2K" not in r.stdout
    lines = [line.split(None, 1)[1] for line in r.stdout.splitlines() if "s demo-" in line]
    for name in names:
        mine = [line for line in lines if line.startswith(name + ":")]
        assert all(a != b for a, b in itertools.pairwise(mine)), mine
        assert any("waiting" in line for line in mine) and "SUCCEEDED" in mine[-1]


def test_live_view_only_on_an_interactive_terminal(monkeypatch: Any) -> None:
    from rich.console import Console

    from jobsctl.commands.demo import live_view

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("TERM", "xterm")
    assert live_view(Console(force_terminal=True, force_interactive=True))
    monkeypatch.setenv("CI", "true")  # a CI log with a pseudo-terminal
    assert not live_view(Console(force_terminal=True, force_interactive=True))
    monkeypatch.delenv("CI")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)  # a pipe, FORCE_COLOR or not
    assert not live_view(Console(force_terminal=True, force_interactive=True))


def test_make_demo_runs_the_ota_rollout_and_exits_0(tmp_path: Path) -> None:
    r = subprocess.run(
        ["make", "demo", f"DEMO_DIR={tmp_path / 'demo'}"],  # as the README says, 5 boards
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "5 devices, ota job" in r.stdout and "5 SUCCEEDED" in r.stdout
    assert (tmp_path / "demo" / "rollout.png").exists()
