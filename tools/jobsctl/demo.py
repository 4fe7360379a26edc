"""The fleet demo: a local stack, N simulated ESP32 boards running the real device code, one job
for their group, a live view, a summary and a timeline picture.

Everything runs on loopback and is stopped at the end. The job is an OTA update to a new,
signed firmware image when the OTA pieces are present (``--job ota``, the default), or a
``config`` job (``--job config``). Success means: every execution SUCCEEDED and, for OTA,
every board now runs the new version.

Each board runs the example sensor application (examples/sensor) beside the agent: it samples
every 100 ms and publishes a reading each second here (``publish_every`` 10) through the
agent's MQTT session; the demo subscribes to ``dt/+/reading`` as the operators' identity, shows
each board's readings in the live view and marks them on the timeline, where the gap around
the reboot shows.
"""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import boardmodel, image
from .checkout import LIB, ROOT
from .device import DeviceProcess, setup_board
from .errors import JobsctlError
from .service.common import TERMINAL
from .stack import Stack
from .statedir import StateDir

GROUP = "demo-fleet"
# Written into a state dir the demo made: the only kind of folder it ever empties.
MARKER = ".jobsctl-demo"
OLD_VERSION = "1.0.0"
NEW_VERSION = "1.1.0"
# Colours of the timeline (and the live view) per state.
# The phases of a job in the order a board goes through them. A board's console (read as it is
# printed) is ahead of the service's record (polled), so a phase the poll reports late never
# moves a board back.
PHASES = ("waiting", "QUEUED", "IN_PROGRESS", "download", "verify", "rebooting", "self-test")
COLOURS = {
    "waiting": "#e4e4e4",  # targeted, not yet released by the rollout rate
    "QUEUED": "#b0b0b0",
    "IN_PROGRESS": "#4a90d9",
    "download": "#7fb3e6",
    "verify": "#1f5fa8",
    "rebooting": "#f5a623",
    "self-test": "#f8d36b",
    "SUCCEEDED": "#2e9e44",
    "FAILED": "#d0021b",
    "REJECTED": "#9013fe",
    "CANCELED": "#7f7f7f",
    "TIMED_OUT": "#8b572a",
    "REMOVED": "#7f7f7f",
}


@dataclass
class Board:
    """What the demo knows of one device: from the service and from the board's console."""

    name: str
    process: DeviceProcess
    status: str = "-"
    step: str = ""
    progress: float | None = None
    version: str = OLD_VERSION
    reason: str = ""
    # (seconds since the job was created, state) each time the state changes.
    timeline: list[tuple[float, str]] = field(default_factory=list)
    # When a reading of the board's sensor arrived (time.monotonic()).
    arrived: list[float] = field(default_factory=list)
    # The same in seconds since the job was created (negative: before it), set by the demo.
    readings: list[float] = field(default_factory=list)

    def gap(self) -> float:
        """The longest time between two readings (the reboot's gap, for an OTA)."""
        return max((b - a for a, b in itertools.pairwise(self.readings)), default=0.0)

    def mark(self, t: float, state: str) -> None:
        if not self.timeline or self.timeline[-1][1] != state:
            self.timeline.append((t, state))

    def behind(self, state: str) -> bool:
        """Whether ``state`` is a phase this board has already gone past."""
        last = self.timeline[-1][1] if self.timeline else ""
        return state in PHASES and last in PHASES and PHASES.index(state) < PHASES.index(last)


@dataclass
class Result:
    job_id: str
    boards: list[Board]
    seconds: float
    png: Path | None
    kind_ota: bool = False

    @property
    def ok(self) -> bool:
        return all(
            b.status == "SUCCEEDED" and (b.version == NEW_VERSION or not self.kind_ota)
            for b in self.boards
        )


def ota_available() -> bool:
    try:
        from . import image, otajob  # noqa: F401
    except ImportError:
        return False
    return (LIB / "iotjobs" / "ota.py").exists()


# What a demo run leaves in its state dir (rollout.* only a demo writes).
_DEMO_ENTRIES = StateDir.ENTRIES | {MARKER, "rollout.json", "rollout.png", "readings.json"}


def _earlier_demo(state_dir: Path) -> bool:
    """A folder made by a demo from before the marker: nothing in it but what a demo writes,
    and the timeline only a demo draws (a `jobsctl serve` folder has no rollout.json)."""
    if not state_dir.is_dir():
        return False
    names = {p.name for p in state_dir.iterdir()}
    return "rollout.json" in names and names <= _DEMO_ENTRIES


def prepare_state_dir(state_dir: Path) -> None:
    """Empty ``state_dir`` for a new demo, or refuse: only a folder that a demo made (it holds
    :data:`MARKER`) and that no running stack holds is ever emptied; a missing or empty folder
    is simply used. Nothing is deleted before both checks pass."""
    state_dir = Path(state_dir)
    if state_dir.exists() and not state_dir.is_dir():
        raise JobsctlError(f"--state-dir {state_dir} is not a folder")
    ours = (state_dir / MARKER).is_file() or _earlier_demo(state_dir)
    if state_dir.is_dir() and any(state_dir.iterdir()) and not ours:
        raise JobsctlError(
            f"{state_dir} is not a demo folder (it has no {MARKER}): the demo empties its "
            "state dir first, so give it a new or empty folder; nothing was deleted"
        )
    busy = (
        f"a running stack holds {state_dir} (jobsctl serve or another demo): stop it "
        "or give the demo another --state-dir; nothing was deleted"
    )
    with StateDir(state_dir).lock(busy):  # locked while the folder is emptied
        for child in state_dir.iterdir():
            if child.name in (StateDir.LOCK, MARKER):
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        (state_dir / MARKER).write_text("made by `jobsctl demo`; emptied by the next demo run\n")


class Demo:
    def __init__(
        self,
        state_dir: Path,
        devices: int = 5,
        kind: str = "ota",
        max_per_minute: int | None = None,
        timeout: float = 300,
        heapsize: str | None = None,
        image_size: int = 256 * 1024,
        on_update: Callable[[Demo], None] | None = None,
        profile: str = boardmodel.DEFAULT,
        minute: float = 60.0,
    ) -> None:
        if devices < 1 or devices > 200:
            raise JobsctlError("--devices must be 1-200")
        if not 1 <= minute <= 60:
            raise JobsctlError("--minute must be 1-60 seconds")
        if kind == "ota" and not ota_available():
            raise JobsctlError("the OTA job needs lib/iotjobs/ota.py and jobsctl.image")
        self.state_dir = Path(state_dir)
        self.count = devices
        self.kind = kind
        self.max_per_minute = max_per_minute
        self.timeout = timeout
        self.heapsize = heapsize
        self.profile = boardmodel.profile(profile).name
        self.image_size = image_size
        self.on_update = on_update
        # Seconds of real time per minute of the local service's clock (the rollout rate).
        self.minute = minute
        self.boards: list[Board] = []
        self.stack: Stack | None = None
        self.job_id = ""
        self.t0 = time.monotonic()
        self.phase = "starting"
        self._created = self.t0
        self._lock = threading.Lock()
        self._readings: Any = None

    # ---------------------------------------------------------------- running

    def run(self) -> Result:
        prepare_state_dir(self.state_dir)
        self.stack = Stack(self.state_dir)
        try:
            self.stack.start()
            self._watch_readings()
            self._power_on_fleet()
            document, extra = self._prepare_job()
            self._create_job(document, extra)
            self._follow()
            png = self._draw()
            result = Result(self.job_id, self.boards, self.elapsed, png, self.kind == "ota")
            return result
        finally:
            if self._readings is not None:
                self._readings.disconnect()
                self._readings.loop_stop()
            for b in self.boards:
                b.process.stop()
            self.stack.stop()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _power_on_fleet(self) -> None:
        assert self.stack is not None
        self.phase = f"provisioning {self.count} devices"
        width = max(2, len(str(self.count)))
        for i in range(1, self.count + 1):
            name = f"demo-{i:0{width}d}"
            self.stack.create_thing(name, group=GROUP)
            extra: dict[str, Any] = {"settings": {"publish_every": 10}}  # a reading a second
            if self.kind == "ota":  # boards trust the fleet's signing key, nothing else
                extra["ota_key_file"] = "ota_key.pem"
            path = setup_board(self.state_dir, name, version=OLD_VERSION, extra=extra)
            if self.kind == "ota":
                shutil.copy(image.public_key_path(self._signing_key()), path / "ota_key.pem")
            app = path / "app"  # the example sensor application, beside the agent
            app.mkdir(exist_ok=True)
            for f in (ROOT / "examples" / "sensor").glob("*.py"):
                shutil.copy(f, app / f.name)
            log = (path / "console.log").open("a", buffering=1)
            proc = DeviceProcess(
                path,
                heapsize=self.heapsize,
                profile=self.profile,
                on_line=self._console(name, log),
            )
            self.boards.append(Board(name, proc))
        self.phase = "powering on"
        for b in self.boards:
            b.process.start()
        for b in self.boards:
            b.process.wait_for("no pending job", timeout=60)
        # The sensors publish before the job too: the picture shows readings, the gap, readings.
        self.phase = "waiting for the sensors' first readings"
        until = time.monotonic() + 15
        while time.monotonic() < until and not all(len(b.arrived) >= 2 for b in self.boards):
            self._changed()
            time.sleep(0.25)  # refresh rate of the live view, not synchronisation
        self._changed()

    def _console(self, name: str, log: Any) -> Callable[[str], None]:
        def on_line(line: str) -> None:
            log.write(line + "\n")
            if not self.job_id:
                return
            board = next((b for b in self.boards if b.name == name), None)
            if board is None:
                return
            with self._lock:
                step = line.rpartition(": step ")[2] if ": step " in line else ""
                if step in ("download", "verify") and not board.behind(step):
                    board.mark(self.elapsed, step)  # the OTA handler's "I <job>: step <name>"
                elif "machine.reset()" in line:
                    board.mark(self.elapsed, "rebooting")
                elif line.startswith("-- power on") and board.timeline:
                    board.mark(self.elapsed, "self-test" if self.kind == "ota" else "IN_PROGRESS")

        return on_line

    def _watch_readings(self) -> None:
        """Subscribes to every board's readings (dt/+/reading) as the operators' identity."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from .broker import EVENTS_IDENTITY

        assert self.stack is not None
        creds = self.stack.events_credentials()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{EVENTS_IDENTITY}-demo")
        c.tls_set(
            ca_certs=self.stack.endpoints["ca_file"],
            certfile=str(creds.cert),
            keyfile=str(creds.key),
        )

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            name = msg.topic.split("/")[1]
            with self._lock:
                board = next((b for b in self.boards if b.name == name), None)
                if board is not None:
                    board.arrived.append(time.monotonic())
                    board.readings = [t - self.t0 for t in board.arrived]

        c.on_message = on_message
        c.connect("localhost", self.stack.mqtt_port)
        c.subscribe("dt/+/reading", qos=0)
        c.loop_start()
        self._readings = c

    def _prepare_job(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.kind == "config":
            self.phase = "config job"
            doc = {"operation": "config", "set": {"settings": {"sample_period_s": 30}}}
            return doc, {}
        return self._prepare_ota()

    def _prepare_ota(self) -> tuple[dict[str, Any], dict[str, Any]]:
        from . import otajob

        assert self.stack is not None
        self.phase = f"building and signing firmware {NEW_VERSION}"
        data = image.build_app_image(NEW_VERSION, size=self.image_size)
        return otajob.prepare(self.stack, data, key=self._signing_key())

    def _signing_key(self) -> Path:
        from . import otajob

        return otajob.signing_key(StateDir(self.state_dir).signing_dir)

    def _create_job(self, document: dict[str, Any], extra: dict[str, Any]) -> None:
        assert self.stack is not None
        iot = self.stack.iot_client()
        group_arn = iot.describe_thing_group(thingGroupName=GROUP)["thingGroupArn"]
        self.job_id = f"demo-{self.kind}-{int(time.time())}"
        params: dict[str, Any] = {
            "jobId": self.job_id,
            "targets": [group_arn],
            "document": json.dumps(document),
            "description": f"jobsctl demo: {self.kind}",
            **extra,
        }
        if self.max_per_minute:
            params["jobExecutionsRolloutConfig"] = {"maximumPerMinute": self.max_per_minute}
        self.t0 = time.monotonic()
        with self._lock:  # before the job exists: a board's console may report it at once
            for b in self.boards:
                b.status = "waiting"
                b.mark(0.0, "waiting")
                b.readings = [t - self.t0 for t in b.arrived]
        iot.create_job(**params)
        self._created = time.monotonic()
        self._changed()
        self.phase = f"job {self.job_id}"

    def _follow(self) -> None:
        assert self.stack is not None
        iot = self.stack.iot_client()
        deadline = time.monotonic() + self.timeout
        while True:
            self._run_clock()
            # A staged rollout creates a board's execution only when the rate releases it (as
            # AWS IoT does: until then DescribeJobExecution answers ResourceNotFound). Describe
            # only the executions that exist; the others are still waiting.
            released = set()
            for page in iot.get_paginator("list_job_executions_for_job").paginate(
                jobId=self.job_id
            ):
                released |= {e["thingArn"].rpartition("/")[2] for e in page["executionSummaries"]}
            for b in self.boards:
                if b.name not in released:
                    continue
                ex = iot.describe_job_execution(jobId=self.job_id, thingName=b.name)["execution"]
                self._update(b, ex)
            self._changed()
            if all(b.status in TERMINAL for b in self.boards):
                break
            if time.monotonic() > deadline:
                self.phase = f"timed out after {self.timeout:.0f} s"
                break
            time.sleep(0.25)  # refresh rate of the live view, not synchronisation
        # The picture ends once every board that rebooted has published again (bounded).
        self.phase = "waiting for the sensors' readings after the reboot"
        until = time.monotonic() + 15
        while time.monotonic() < until and not all(self._read_since_boot(b) for b in self.boards):
            self._changed()
            time.sleep(0.25)  # refresh rate of the live view, not synchronisation
        self.phase = "done"
        self._changed()

    def _read_since_boot(self, b: Board) -> bool:
        with self._lock:
            boot = max((t for t, s in b.timeline if s in ("self-test", "rebooting")), default=0)
            return b.status != "SUCCEEDED" or any(t > boot for t in b.readings)

    def _run_clock(self) -> None:
        """With ``minute`` < 60 the service's clock runs 60/minute times faster than real time
        (only the demo's own stack: rollout minutes pass in ``minute`` seconds)."""
        if self.minute >= 60 or self.stack is None:
            return
        real = time.monotonic() - self._created
        ahead = real * (60.0 / self.minute - 1.0)
        if ahead > self.stack.model.skew:
            self.stack.advance_clock(ahead - self.stack.model.skew)

    def _update(self, b: Board, ex: dict[str, Any]) -> None:
        details = ex.get("statusDetails", {}).get("detailsMap", {})
        with self._lock:
            b.status = ex["status"]
            b.step = details.get("step", b.step if b.status == "IN_PROGRESS" else "")
            b.reason = details.get("reason", "")
            done, _, total = details.get("progress", "").partition("/")
            if done.isdigit() and total.isdigit() and int(total):
                b.progress = min(1.0, int(done) / int(total))
            if details.get("firmware"):
                b.version = details["firmware"]
            # The OTA steps each have their own colour; other jobs show their status.
            state = b.step if b.status == "IN_PROGRESS" and b.step in COLOURS else b.status
            if not b.behind(state):
                b.mark(self.elapsed, state)

    def _changed(self) -> None:
        if self.on_update is not None:
            self.on_update(self)

    # ---------------------------------------------------------------- picture

    def _draw(self) -> Path | None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch

        end = self.elapsed
        fig, ax = plt.subplots(figsize=(10, 1.2 + 0.4 * len(self.boards)))
        for row, b in enumerate(reversed(self.boards)):
            points = [*b.timeline, (end, "")]
            for (t, state), (t_next, _) in itertools.pairwise(points):
                ax.barh(row, max(t_next - t, 0.01), left=t, color=COLOURS.get(state, "#cccccc"))
            # Each reading of the board's sensor: a tick on its row (a gap = no readings).
            ax.plot(b.readings, [row] * len(b.readings), "|", color="black", markersize=9)
        first = min((t for b in self.boards for t in b.readings), default=0.0)
        ax.set_xlim(left=min(0.0, first) - 0.2)
        ax.set_yticks(range(len(self.boards)), [b.name for b in reversed(self.boards)])
        ax.set_xlabel("seconds since the job was created")
        ax.set_title(f"{self.job_id}: {self.count} devices (ticks: sensor readings)")
        used = {s for b in self.boards for _, s in b.timeline}
        ax.legend(
            handles=[Patch(color=c, label=s) for s, c in COLOURS.items() if s in used],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.5 / (1 + len(self.boards) / 4)),
            ncol=6,
            frameon=False,
        )
        fig.tight_layout()
        out = self.state_dir / "rollout.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        # The same timelines for programs: {board: [[seconds, state], ...]}.
        record = {b.name: [[round(t, 3), state] for t, state in b.timeline] for b in self.boards}
        (self.state_dir / "rollout.json").write_text(json.dumps(record, indent=1) + "\n")
        # When each board's sensor readings arrived: {board: [seconds, ...]}.
        readings = {b.name: [round(t, 3) for t in b.readings] for b in self.boards}
        (self.state_dir / "readings.json").write_text(json.dumps(readings, indent=1) + "\n")
        return out
