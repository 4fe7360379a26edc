"""The agent as a guest in the sensor's application (issue 16): the example application
(examples/sensor) runs beside the agent in one asyncio loop on a simulated board, publishes
its readings through the agent's MQTT session while a signed OTA job runs and after the reboot
on the new firmware, and holds jobs with its update window ("not now").

An operator's watcher (the events identity: it may read dt/# and write cmd/#) receives the
readings and opens or closes the window; every wait is on a reading, a console line or the
service's record.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from plugin_agent import OFFLINE_AGENT, arn, details, final
from plugin_stack import unique, wait_until

from jobsctl import cli, image, otajob
from jobsctl.broker import EVENTS_IDENTITY
from jobsctl.device import ROOT, DeviceProcess
from jobsctl.stack import Stack

Boards = Callable[..., DeviceProcess]
EXAMPLE = ROOT / "examples" / "sensor"


class Readings:
    """Subscribed to dt/<thing>/reading; publishes the window commands."""

    def __init__(self, stack: Stack, thing: str) -> None:
        creds = stack.events_credentials()
        self.thing = thing
        self.got: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{EVENTS_IDENTITY}-{unique('r')}"
        )
        self.client.tls_set(
            ca_certs=stack.endpoints["ca_file"], certfile=str(creds.cert), keyfile=str(creds.key)
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.granted: list[int] = []
        self.client.connect("localhost", stack.mqtt_port)
        self.client.loop_start()
        self.client.subscribe(f"dt/{thing}/reading", qos=0)
        with self.cond:
            assert self.cond.wait_for(lambda: self.granted, 10), "no SUBACK"
        assert self.granted == [0]

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            r = json.loads(msg.payload)
            r["_at"] = time.monotonic()  # when it arrived (the test's own clock)
            self.got.append(r)
            self.cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self.cond:
            self.granted = [c.value for c in codes]
            self.cond.notify_all()

    def wait(self, n: int = 1, timeout: float = 30, since: int = 0) -> list[dict[str, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= since + n, timeout), self.got
            return list(self.got)

    def window(self, state: str) -> None:
        self.client.publish(f"cmd/{self.thing}/window", state.encode(), qos=1).wait_for_publish()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return otajob.signing_key(tmp_path_factory.mktemp("signing"))


@pytest.fixture()
def sensor(
    stack_session: Stack, boards: Boards, signing: Path
) -> Iterator[tuple[DeviceProcess, Readings]]:
    thing = unique("sensor")
    # A reading every sample (100 ms) so that a job of a second or two spans several.
    dev = boards(
        stack_session,
        thing,
        start=False,
        ota_key_file="ota_key.pem",
        settings={"publish_every": 1},
    )
    shutil.copy(image.public_key_path(signing), dev.board / "ota_key.pem")
    app = dev.board / "app"
    app.mkdir(exist_ok=True)
    for f in EXAMPLE.glob("*.py"):
        shutil.copy(f, app / f.name)
    readings = Readings(stack_session, thing)
    try:
        dev.start()
        dev.wait_for("no pending job")
        readings.wait(2)
        yield dev, readings
    finally:
        readings.close()


def _by_boot(got: list[dict[str, Any]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in got:
        out.setdefault(r["boot"], []).append(r["seq"])
    return out


def test_the_sensor_keeps_publishing_through_a_signed_ota_and_after_the_reboot(
    stack_session: Stack, sensor: tuple[DeviceProcess, Readings], signing: Path
) -> None:
    dev, readings = sensor
    thing = dev.board.name
    data = image.build_app_image("2.0.0", size=600_000)
    doc, extra = otajob.prepare(stack_session, data, key=signing)
    job = unique("ota")
    old = readings.wait()[-1]["boot"]
    t0 = time.monotonic()
    stack_session.iot_client().create_job(
        jobId=job, targets=[arn(stack_session, thing)], document=json.dumps(doc), **extra
    )
    ex = final(stack_session, thing, job, timeout=120)
    assert ex["status"] == "SUCCEEDED", ex
    assert details(ex)["firmware"] == "2.0.0"
    got = readings.wait(3, since=len(readings.got))  # and on the new firmware
    boots = _by_boot(got)
    assert len(boots) == 2, boots  # the old firmware's boot and the new one's
    # Sampled and published while the job ran (download, verify, reboot report).
    assert [r for r in got if r["boot"] == old and r["_at"] > t0], got
    for seqs in boots.values():
        # No reading lost or repeated within a boot: the queue held them while MQTT was
        # closed for the download's own TLS session.
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert all(r["dropped"] == 0 for r in got)
    # Outside TLS handshakes no sample was lost (a tick never a whole period late; the bench
    # measures the lateness itself against its 50 ms goal on an unloaded run).
    assert max(r["late_ms"] for r in got) < 100, [r["late_ms"] for r in got]
    assert all(r["missed"] == 0 for r in got if r["late_hs_ms"] == 0), got


def test_a_job_inside_a_not_now_window_waits_then_runs(
    stack_session: Stack, sensor: tuple[DeviceProcess, Readings]
) -> None:
    dev, readings = sensor
    thing = dev.board.name
    readings.window("closed")
    job = unique("cfg")
    mark = dev.mark()
    stack_session.iot_client().create_job(
        jobId=job,
        targets=[arn(stack_session, thing)],
        document=json.dumps({"operation": "config", "set": {"log_level": "debug"}}),
    )
    dev.wait_for(f"{job}: waiting for the application", since=mark)
    ex = wait_until(
        lambda: (
            e
            if (e := _execution(stack_session, thing, job))["status"] == "IN_PROGRESS"
            and details(e).get("step") == "waiting for the application"
            else None
        ),
        what="IN_PROGRESS waiting for the application",
    )
    assert ex["statusDetails"]["detailsMap"]["step"] == "waiting for the application"
    n = len(readings.got)
    readings.wait(2, since=n)  # the application runs on while the job waits
    readings.window("open")
    ex = final(stack_session, thing, job, timeout=60)
    assert ex["status"] == "SUCCEEDED", ex
    assert json.loads((dev.board / "config.json").read_text())["log_level"] == "debug"


def test_a_cancel_while_the_job_waits_for_the_window_ends_it_cleanly(
    stack_session: Stack, sensor: tuple[DeviceProcess, Readings]
) -> None:
    dev, readings = sensor
    thing = dev.board.name
    readings.window("closed")
    job = unique("cfg")
    iot = stack_session.iot_client()
    mark = dev.mark()
    doc = {"operation": "config", "set": {"log_level": "debug"}}
    iot.create_job(jobId=job, targets=[arn(stack_session, thing)], document=json.dumps(doc))
    dev.wait_for(f"{job}: waiting for the application", since=mark)
    iot.cancel_job(jobId=job, force=True)
    dev.wait_for(f"{job}: canceled, handler stopped", since=mark)
    assert _execution(stack_session, thing, job)["status"] == "CANCELED"
    assert json.loads((dev.board / "config.json").read_text()).get("log_level") != "debug"
    assert not (dev.board / "jobstate.json").exists()
    # The agent goes on: with the window open the next job runs.
    readings.window("open")
    job2 = unique("cfg")
    iot.create_job(jobId=job2, targets=[arn(stack_session, thing)], document=json.dumps(doc))
    assert final(stack_session, thing, job2, timeout=60)["status"] == "SUCCEEDED"
    n = len(readings.got)
    readings.wait(2, since=n)


def _execution(stack: Stack, thing: str, job: str) -> dict[str, Any]:
    return dict(stack.iot_client().describe_job_execution(jobId=job, thingName=thing)["execution"])


def test_the_example_application_deploys_as_a_bundle_and_starts_beside_the_agent(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    # The README's command: the example as a signed bundle job onto a board that runs the
    # agent alone; after the reset the application runs beside it, its selftest.py passes
    # (the sensor samples) and its readings arrive.
    thing = unique("bare")
    dev = boards(stack_session, thing, start=False, ota_key_file="ota_key.pem")
    shutil.copy(image.public_key_path(signing), dev.board / "ota_key.pem")
    readings = Readings(stack_session, thing)
    try:
        dev.start()
        dev.wait_for("no pending job")
        job = unique("sensor")
        state = ["--state-dir", str(stack_session.state_dir)]
        argv = ["job", "bundle", job, *state, "--targets", thing, "--dir", str(EXAMPLE)]
        assert cli.main([*argv, "--version", "sensor-1", "--key", str(signing)]) == 0
        ex = final(stack_session, thing, job, timeout=120)
        assert ex["status"] == "SUCCEEDED", ex
        assert details(ex)["app"] == "sensor-1"
        r = readings.wait(1, timeout=30)[0]  # one reading per 5 s by default
        assert r["n"] == 50 and (r["missed"] == 0 or r["late_hs_ms"] >= 100)
    finally:
        readings.close()


def board_with_app(stack: Stack, boards: Boards, thing: str, source: str) -> DeviceProcess:
    """A board started with ``source`` as its application (app/application.py)."""
    dev = boards(stack, thing, start=False)
    app = dev.board / "app"
    app.mkdir(exist_ok=True)
    (app / "application.py").write_text(source)
    dev.start()
    return dev


def test_an_application_that_fails_to_start_leaves_the_agent_running(
    stack_session: Stack, boards: Boards
) -> None:
    # A broken application (it raises on import, or its main() raises) is said on the console;
    # the agent runs on alone, so that a job can still replace it.
    thing = unique("broken")
    dev = board_with_app(stack_session, boards, thing, "raise RuntimeError('broken at import')\n")
    dev.wait_for("broken at import")
    dev.wait_for("no pending job")
    doc = {"operation": "config", "set": {"log_level": "debug"}}
    job = unique("cfg")
    stack_session.iot_client().create_job(
        jobId=job, targets=[arn(stack_session, thing)], document=json.dumps(doc)
    )
    assert final(stack_session, thing, job, timeout=60)["status"] == "SUCCEEDED"
    # and an application whose main() raises: the same
    (dev.board / "app" / "application.py").write_text(
        "async def main(agent):\n    raise ValueError('oops')\n"
    )
    dev.power_off()
    mark = dev.mark()
    dev.start()
    dev.wait_for("application stopped: ValueError('oops',)", since=mark)
    dev.wait_for("no pending job", since=mark)


def test_the_agent_tries_mqtt_once_and_loads_its_application_side_before_the_first_turn(
    stack_session: Stack, boards: Boards
) -> None:
    # One MQTT try comes before the application's first turn (its TLS session must find the
    # IDF heap before the application's allocations can grow the GC heap into it), and only
    # one: the application is not held for retries. The agent's side for the application
    # (iotjobs.guest) is loaded by then too: its import is not in the application's first tick
    # or first publish, where it held the loop 0.8 ms (bench.guest).
    thing = unique("first")
    dev = board_with_app(
        stack_session,
        boards,
        thing,
        "import sys\n"
        "async def main(agent):\n"
        "    print('application: first turn, tried %d, connected %s, guest %s'\n"
        "          % (agent.link.attempts, agent.link.t is not None,\n"
        "             'iotjobs.guest' in sys.modules))\n",
    )
    dev.wait_for("no pending job")
    assert any(
        "application: first turn, tried 1, connected True, guest True" in x for x in dev.lines
    ), dev.lines


def test_a_tight_board_with_the_sensor_application_connects(
    stack_session: Stack, boards: Boards
) -> None:
    # esp32-tight (77 KB of IDF heap): when the sensor ran before the first MQTT connect, its
    # allocations grew the GC heap by 56 KB into the IDF heap and no TLS session fitted again:
    # the board retried for ever and never took a job.
    thing = unique("tight")
    dev = boards(stack_session, thing, start=False, profile="esp32-tight")
    app = dev.board / "app"
    app.mkdir(exist_ok=True)
    for f in EXAMPLE.glob("*.py"):
        shutil.copy(f, app / f.name)
    dev.start()
    dev.wait_for("no pending job")
    assert not any("connect failed" in x for x in dev.lines), dev.lines


def test_python_m_bench_guest_reports_lateness_losses_and_holds(capsys: Any) -> None:
    # README: `python -m bench.guest`, as written, with one run without the attribution
    # instrument and one with it (its figures are a benchmark's, not checked against time
    # here): every row it advertises is printed, the job succeeded.
    from bench import guest

    assert guest.main(["--runs", "1", "--named", "1", "--profile-pieces"]) == 0
    out = capsys.readouterr().out
    # the figures come from the run without the instrument, the names from the one with it
    assert " run 0: " in out and " named run 0: " in out, out
    assert "1 runs without the attribution instrument" in out, out
    assert "named by 1 run(s) with the attribution instrument" in out, out
    # --profile-pieces: the stretches the probe logged, named with the agent functions that ran
    # in them, in order; the MQTT session's handshake (tens of ms) is always among them
    assert "  stretch hs " in out and " | transport.Link.ensure " in out, out
    for row in (
        "largest lateness of the 100 ms tick outside TLS handshakes",
        "readings lost outside the reboot",
        "longest stretch the loop was held without a yield",
        "every stretch over 0.5 ms outside handshakes with the stand-ins taken out, named",
        "after the reset, before the application's loop exists",
        "the agent's pieces of work between two yields",
    ):
        assert row in out, out
    assert "1/1 SUCCEEDED" in out, out
    # the attribution names what ran in the stretches the probe saw; set_boot's whole-image
    # check (C, firmware/board/_board/hw.c, as in the firmware) is not among them: it runs after
    # the reboot window, right before the reset (otaboot.activate), in the reboot's own gap
    assert "agent.Agent." in out, out
    assert "slot.Slot.activate=" not in out, out


@pytest.mark.slow
def test_python_m_bench_guest_runs_without_the_attribution(capsys: Any) -> None:
    # README: `--no-attribution` runs no job with the timing wrappers: the rows are printed,
    # and no agent function is named in them.
    from bench import guest

    assert guest.main(["--runs", "1", "--no-attribution"]) == 0
    assert not guest.PROFILING  # main() leaves the module's default
    out = capsys.readouterr().out
    assert " named run " not in out and "not named (--no-attribution" in out, out
    assert "1/1 SUCCEEDED" in out, out
    assert "every stretch over 0.5 ms outside handshakes" in out, out
    assert "agent.save=" not in out and "otaboot." not in out, out


WAKE = (
    OFFLINE_AGENT
    + """

class T:
    wakes = 0

    def wake(self):
        T.wakes += 1


link = L()
a = agent.Agent({"thing_name": "th"}, B(), link)
a.publish(a.topic("reading"), b"1")
print("DOWN", T.wakes, len(a._out))
link.t = T()
a.publish(a.topic("reading"), b"2")
print("UP", T.wakes, len(a._out))
"""
)


def test_a_publish_wakes_the_waiting_agent(micropython: Callable[..., Any]) -> None:
    # The agent waits for its socket (Transport.wait), not on a tick: a message the
    # application queues ends that wait (Transport.wake; tests/test_transport_tls.py shows
    # wake() ending a wait), and is only queued while MQTT is down.
    out = micropython(WAKE).check().out
    assert "DOWN 0 1" in out, out
    assert "UP 1 2" in out, out


FORGET = """
import sys
sys.path.insert(0, "")
from iotjobs import agent

agent.register("mine", "myhandler:run")
agent.register("theirs", "handlers.other:run")
before = list(sys.modules)
import myhandler  # the handler registered by name
import handlers.other  # one in a package: the package holds it
import iotjobs.slot  # a helper of the library's that the handler imported
import sensorlib  # what the application's task imported meanwhile
agent._forget(before)
names = ("myhandler", "handlers", "handlers.other", "iotjobs.slot", "sensorlib")
print("LOADED", [n for n in names if n in sys.modules])
"""


def test_a_job_unloads_its_own_modules_and_not_the_applications(
    micropython: Callable[..., Any], tmp_path: Path
) -> None:
    # The application's tasks run beside a job, and may import a module of theirs while it
    # runs: the job's end unloads the handler's module and the library's helpers it loaded, not
    # that one (its next import would make a second copy with fresh state).
    (tmp_path / "myhandler.py").write_text("def run(ctx, doc):\n    return None\n")
    (tmp_path / "sensorlib.py").write_text("STATE = []\n")
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "__init__.py").write_text("")
    (tmp_path / "handlers" / "other.py").write_text("def run(ctx, doc):\n    return None\n")
    out = micropython(FORGET, cwd=tmp_path).check().out
    assert "LOADED ['sensorlib']" in out, out


ACTIVATE = """
import asyncio
from iotjobs import otaboot
from iotjobs.context import Context


class Slot:
    def __init__(self, label):
        self.label = label

    def activate(self):
        print("SET_BOOT", self.label)
        if self.label == "bad":
            raise OSError(-5379)

    def erase(self):
        print("ERASE", self.label)


class Board:
    def ticks_ms(self):
        return 0

    def running_slot(self):
        return Slot(RUNNING)

    def update_slot(self, label):
        return Slot(label)

    def reset(self):
        print("RESET")


class Agent:
    cfg = {"progress_interval_ms": 0}
    link = None
    stale = False
    board = Board()

    def __init__(self):
        self.asked = 0

    def may_reboot(self):
        self.asked += 1
        print("WINDOW", self.asked)
        return self.asked > 2

    def _app(self):
        from iotjobs import guest

        return guest

    async def sleep(self, ms):
        await asyncio.sleep_ms(0)

    def persist(self, *a):
        print("SAVE", state.get("step"))

    async def report(self, status, details):
        print("REPORT", details["step"])

    def memresets(self):
        return 0

    def log(self, level, msg):
        pass


async def main(slot):
    try:
        print("NEXT", await otaboot.activate(Context(Agent(), "j", "ota", state, False), {}))
    except SystemExit:
        print("EXIT")
    except Exception as e:
        print("RAISED", type(e).__name__, e)


RUNNING = "ota_0"
for slot in ("ota_1", "bad"):
    state = {"step": "activate", "slot": slot, "off": 10, "old": "1.0"}
    print("JOB", slot)
    asyncio.run(main(slot))
# the power went between set_boot and its save: the new image runs, with the state's step
RUNNING = "ota_1"
state = {"step": "activate", "slot": "ota_1", "off": 10, "old": "1.0"}
print("JOB resumed")
asyncio.run(main("ota_1"))
"""


def test_set_boot_comes_after_the_reboot_window_right_before_the_reset(
    micropython: Callable[..., Any],
) -> None:
    # set_boot's whole-image check holds the loop (C, ~0.1 s for 1 MiB on a board): the OTA
    # handler makes it the last thing before the reset, after the application's reboot window,
    # with the state that names the next step saved between it and the reset. An image it
    # refuses ends the job with no reset and its first block erased.
    out = micropython(ACTIVATE).check().out
    jobs = [j.strip().splitlines() for j in out.split("JOB ")[1:]]
    window = [
        "SAVE activate",
        "REPORT rebooting",
        "WINDOW 1",
        "REPORT waiting for the application to allow a reboot",
        "WINDOW 2",
        "WINDOW 3",
    ]
    assert jobs[0] == ["ota_1", *window, "SET_BOOT ota_1", "SAVE booting", "RESET", "EXIT"], out
    assert jobs[1][: len(window) + 3] == ["bad", *window, "SET_BOOT bad", "ERASE bad"], out
    assert jobs[1][-1].startswith("RAISED Failed the bootloader would refuse this image"), out
    assert "RESET" not in jobs[1], out
    assert jobs[2] == ["resumed", "NEXT booting"], out
