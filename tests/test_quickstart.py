"""The README's local quickstart, run as written (in a fresh folder, `make serve` being
`jobsctl serve --state-dir .local`): every command exits 0, the board ends on the new firmware
and the OTA execution is SUCCEEDED, and everything it made is under .local/."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

from plugin_stack import wait_until

from jobsctl import image
from jobsctl.checkout import ROOT

JOBSCTL = str(Path(sys.executable).parent / "jobsctl")


def quickstart() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Local quickstart", 1)[1].split("```\n", 2)[1]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines()]


def test_the_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    lines = quickstart()
    assert lines[0] == "make serve"
    serve = subprocess.Popen(
        [JOBSCTL, "serve", "--state-dir", ".local"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    board: subprocess.Popen[str] | None = None
    try:
        assert serve.stdout is not None
        for line in serve.stdout:  # wait for the stack, as a user waits for this line
            if line.startswith("jobsctl: serving"):
                break
        else:
            raise AssertionError("jobsctl serve stopped before serving")
        outputs: dict[str, str] = {}
        for line in lines[1:]:
            if not line.startswith("$J "):
                assert line.startswith(("#", "J=")), line
                continue
            argv = [JOBSCTL, *shlex.split(line[3:].rstrip("&").strip())]
            if line.endswith("&"):  # the simulated board, in the background
                board = subprocess.Popen(
                    argv,
                    cwd=tmp_path,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
                assert board.stdout is not None
                for out in board.stdout:
                    if "no pending job" in out:
                        break
                # Keep reading its console so that a full pipe never stalls the board.
                threading.Thread(target=board.stdout.read, daemon=True).start()
                continue
            if argv[1:3] in (["job", "executions"], ["job", "execution"]):
                # The job takes a moment: ask again until the board reports the end.
                def done(argv: list[str] = argv) -> str | None:
                    r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
                    assert r.returncode == 0, r.stderr
                    return r.stdout if '"SUCCEEDED"' in r.stdout else None

                outputs[argv[2]] = wait_until(done, timeout=120, what=line)
                continue
            r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert r.returncode == 0, f"{line}\n{r.stdout}{r.stderr}"
        [summary] = json.loads(outputs["executions"])["executionSummaries"]
        assert summary["statusDetails"]["firmware"] == "1.1.0"
        ex = json.loads(outputs["execution"])["execution"]
        assert ex["status"] == "SUCCEEDED" and ex["statusDetails"]["detailsMap"]["firmware"]
        flash = tmp_path / ".local" / "devices" / "sensor-1"
        running = json.loads((flash / "flash" / "otadata.json").read_text())["running"]
        assert image.read_app_version(image.slot_image(flash, running)) == "1.1.0"
        assert sorted(p.name for p in tmp_path.iterdir()) == [".local"]  # nothing outside it
    finally:
        for proc in (board, serve):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
