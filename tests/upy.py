"""Running device code under the MicroPython Unix port, for the tests and the host tools."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from jobsctl import boardmodel
from jobsctl.checkout import LIB, MICROPYTHON, SIM, UPYLIB
from jobsctl.checkout import ROOT as ROOT  # the tests name the checkout upy.ROOT

# The device library, the simulated hardware and the pinned umqtt.simple as source, ahead of
# the port's frozen copies of the last two (build/micropython is the stock-firmware board), so
# that a snippet always runs the code as it is in the worktree; `.frozen` keeps asyncio.
DEVICE_PATH = [str(LIB), str(SIM), str(UPYLIB), ".frozen"]


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
    profile: str | None = None,
) -> Result:
    """Run a snippet (``code``) or a file (``script``) under the Unix port and wait for it.

    ``profile``: a board memory profile (jobsctl.boardmodel: its first GC area unless
    ``heapsize`` says otherwise, and its IDF heap); None runs a fixed heap without the model.
    """
    cmd = [str(port)]
    if profile is not None:
        heapsize = heapsize or boardmodel.profile(profile).heapsize
    if heapsize:
        cmd += ["-X", f"heapsize={heapsize}"]
    if code is not None:
        cmd += ["-c", code]
    elif script is not None:
        cmd += [str(script)]
    cmd += list(args)
    full_env = dict(os.environ)
    path = DEVICE_PATH
    if port.name == "micropython-frozen":  # the custom firmware's frozen library comes first
        path = [".frozen", *DEVICE_PATH[:-1]]
    full_env["MICROPYPATH"] = os.pathsep.join(path)
    for key in ("SIM_IDF_HEAP", "SIM_IDF_PSRAM", "SIM_MEM_REPORT"):
        full_env.pop(key, None)
    if profile is not None:
        full_env.update(boardmodel.profile(profile).env())
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
