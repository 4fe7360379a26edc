"""Running device code under the MicroPython Unix port, for the tests and the host tools."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MICROPYTHON = ROOT / "build" / "micropython"
# What a board has on its path: the device library, then (Unix only) the simulated hardware
# and the pinned umqtt.simple that official firmware has frozen in. `.frozen` keeps the
# port's own frozen modules (asyncio) reachable.
DEVICE_PATH = [".frozen", str(ROOT / "lib"), str(ROOT / "sim"), str(ROOT / "build" / "upylib")]


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def output(self) -> str:
        return self.out + self.err

    def check(self) -> Result:
        assert self.rc == 0, (
            f"micropython exited {self.rc}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"
        )
        return self


def run(
    code: str | None = None,
    *,
    script: str | Path | None = None,
    args: tuple[str, ...] = (),
    heapsize: str | None = None,
    timeout: float = 60,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    port: Path = MICROPYTHON,
) -> Result:
    """Run a snippet (``code``) or a file (``script``) under the Unix port and wait for it."""
    cmd = [str(port)]
    if heapsize:
        cmd += ["-X", f"heapsize={heapsize}"]
    if code is not None:
        cmd += ["-c", code]
    elif script is not None:
        cmd += [str(script)]
    cmd += list(args)
    full_env = dict(os.environ)
    full_env["MICROPYPATH"] = os.pathsep.join(DEVICE_PATH)
    if env:
        full_env.update(env)
    proc = subprocess.run(
        cmd,
        cwd=str(cwd) if cwd else None,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
