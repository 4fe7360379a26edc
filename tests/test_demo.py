"""`jobsctl demo`: the newcomer's first command, end to end (small fleet, config job)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jobsctl import image
from jobsctl.stack import Stack

ROOT = Path(__file__).resolve().parent.parent
JOBSCTL = Path(sys.executable).parent / "jobsctl"


def test_demo_config_job_succeeds_on_every_device_and_draws_the_timeline(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    args = ["--devices", "2", "--job", "config", "--state-dir", str(state)]
    # A config job fits the tightest board profile.
    r = subprocess.run(
        [str(JOBSCTL), "demo", *args, "--profile", "esp32-tight"],
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
        assert "SUCCEEDED" in console and "(boot 1, esp32-tight)" in console
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
        phases = [p for _, p in timelines[name] if p not in ("QUEUED", "IN_PROGRESS")]
        assert phases == ["download", "verify", "rebooting", "self-test", "SUCCEEDED"], name


def test_demo_refuses_a_fleet_size_it_cannot_run(tmp_path: Path) -> None:
    r = subprocess.run(
        [str(JOBSCTL), "demo", "--devices", "0", "--job", "config", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["jobsctl: --devices must be 1-200"]
