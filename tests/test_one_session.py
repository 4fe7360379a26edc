"""One TLS session at a time: with MQTT closed during the HTTPS download (``tls_sessions: 1``,
what a plain ESP32 gets by default from its free IDF heap), the OTA job still succeeds, reports
its progress and learns of a cancellation at the check-ins (at every reconnect of the download
and every ``checkin_ms``), and an idle agent holds only the modules it uses.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from plugin_agent import OTA_HEAP, arn, create_job, details, final
from plugin_stack import unique, wait_until
from test_ota_e2e import (
    assert_old_firmware_boots,
    ota_job,
    persisted_offset,
    proxied_job,
    running_version,
)

from harness.faultproxy import Fault, FaultProxy
from jobsctl import image, otajob
from jobsctl.device import DeviceProcess
from jobsctl.stack import Stack

Boards = Callable[..., DeviceProcess]
ONE = {"tls_sessions": 1, "checkin_ms": 1000}


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return otajob.signing_key(tmp_path_factory.mktemp("signing"))


@pytest.fixture()
def proxy(stack_session: Stack) -> Iterator[FaultProxy]:
    assert stack_session.objects is not None
    with FaultProxy("127.0.0.1", stack_session.objects.port) as p:
        yield p


def one_session_board(
    stack: Stack,
    boards: Boards,
    signing: Path,
    profile: str = "esp32-plain",
    **extra: object,
) -> DeviceProcess:
    dev = boards(
        stack,
        unique("one"),
        heapsize=OTA_HEAP,
        start=False,
        profile=profile,
        ota_key_file="ota_key.pem",
        **{**ONE, **extra},
    )
    shutil.copy(image.public_key_path(signing), dev.board / "ota_key.pem")
    dev.start()
    dev.wait_for("no pending job")
    return dev


def between(lines: list[str], first: str, last: str) -> list[str]:
    i = next(n for n, line in enumerate(lines) if first in line)
    j = next(n for n, line in enumerate(lines) if n > i and last in line)
    return lines[i:j]


def test_download_with_mqtt_closed_checks_in_and_succeeds(
    stack_session: Stack, boards: Boards, signing: Path, proxy: FaultProxy
) -> None:
    dev = one_session_board(stack_session, boards, signing)
    data = image.build_app_image("2.0.0", size=600_000)
    proxy.plan(Fault.stall(300_000, seconds=2))  # longer than checkin_ms: at least one check-in
    job = proxied_job(stack_session, dev.board.name, data, signing, proxy)
    ex = final(stack_session, dev.board.name, job, timeout=120)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert running_version(dev) == "2.0.0"
    # Each HTTPS session after the first follows a check-in (MQTT connected again, progress
    # reported, the job described), and MQTT is closed again before it opens.
    during = between(dev.lines, "step download", "step verify")
    checkins = [n for n, line in enumerate(during) if "connected, subscribed" in line]
    resumed = [n for n, line in enumerate(during) if "resuming download at" in line]
    assert proxy.stats.connections >= 2, "\n".join(during)
    assert len(checkins) == len(resumed) == proxy.stats.connections - 1, "\n".join(during)
    assert all(c < r for c, r in zip(checkins, resumed, strict=True))


def test_cancel_with_mqtt_closed_is_seen_at_the_next_checkin(
    stack_session: Stack, boards: Boards, signing: Path, proxy: FaultProxy
) -> None:
    dev = one_session_board(stack_session, boards, signing, timeout_ms=1500)
    data = image.build_app_image("2.0.0", size=600_000)
    proxy.plan(Fault.stall(300_000, seconds=30))
    job = proxied_job(stack_session, dev.board.name, data, signing, proxy)
    wait_until(lambda: persisted_offset(dev) >= 131072, timeout=30, what="a persisted offset")
    stack_session.iot_client().cancel_job(jobId=job, force=True)
    dev.wait_for(f"{job}: canceled, handler stopped", timeout=30)
    assert final(stack_session, dev.board.name, job)["status"] == "CANCELED"
    assert_old_firmware_boots(dev)
    # ... and the agent goes on: the next job runs.
    nxt = proxied_job(stack_session, dev.board.name, data, signing, proxy)
    assert final(stack_session, dev.board.name, nxt, timeout=120)["status"] == "SUCCEEDED"


# The GC is conservative: a stale copy of a pointer in a live stack frame keeps its object alive.
# So the module-level code never holds the handler (cycle() does, and returns only numbers), and
# before each measurement scrub() zeroes the stack below (a function's state is zeroed on entry)
# so that what the figures show is what the agent holds, not what the C compiler left behind.
UNLOAD = (
    """
import gc, sys
import iotjobs.agent as agent
agent.register("ota", "iotjobs.ota:handle")
mods = list(sys.modules)

def cycle():
    fn, _ = agent._resolve("ota")
    gc.collect()
    loaded = gc.mem_alloc()
    print("LOADED", sorted(n for n in sys.modules if n not in mods))
    fn = None
    agent._forget(mods)
    import iotjobs
    print("AFTER", sorted(n for n in sys.modules if n not in mods), hasattr(iotjobs, "ota"))
    return loaded

def scrub():
    """
    + "; ".join(f"x{i} = 0" for i in range(400))
    + """

def heap():
    gc.collect()
    return gc.mem_alloc()

scrub()
idle = heap()
loaded = cycle()
scrub()
after = heap()
cycle()  # the next job imports it again...
scrub()
print("HEAP", idle, loaded, after, heap())
"""
)


def test_a_handler_module_is_unloaded_when_its_job_ends(micropython: Callable[..., object]) -> None:
    out = micropython(UNLOAD, heapsize="128k").check().out  # type: ignore[attr-defined]
    assert "LOADED ['iotjobs.ota']" in out, out
    assert "AFTER [] False" in out, out
    idle, loaded, after, again = (int(x) for x in out.split("HEAP ")[1].split())
    # The handler's bytecode is given back; its names stay interned (MicroPython never frees
    # qstrs), so a second job adds nothing more.
    assert after - idle < (loaded - idle) / 2, out
    assert abs(again - after) < 256, out


@pytest.mark.parametrize(
    "profile, sessions",
    [("esp32-tight", 0), ("esp32-plain", 2)],
    ids=["tight-profile", "two-sessions-on-plain"],
)
def test_a_job_that_cannot_fit_fails_naming_memory_and_the_agent_takes_the_next(
    stack_session: Stack, boards: Boards, signing: Path, profile: str, sessions: int
) -> None:
    # esp32-tight (77 KB of IDF heap) holds the agent but not an OTA download beside the GC
    # heap the job grows; esp32-plain does not hold two TLS sessions at once (tls_sessions 2:
    # MQTT kept open during the download). Either way the job ends FAILED with a reason that
    # names memory, before anything is written; the old firmware still boots, the board never
    # resets, and the agent goes on with the next job.
    dev = one_session_board(stack_session, boards, signing, profile=profile, tls_sessions=sessions)
    data = image.build_app_image("2.0.0", size=300_000)
    job = ota_job(stack_session, dev.board.name, data, signing)
    try:
        ex = final(stack_session, dev.board.name, job, timeout=60)
    except AssertionError:
        raise AssertionError("\n".join(dev.lines)) from None
    reason = details(ex).get("reason", "")
    assert ex["status"] == "FAILED" and reason.startswith("out of memory"), reason
    assert_old_firmware_boots(dev)
    assert image.slot_image(dev.board, "ota_1")[:4096] == b"\xff" * 4096  # never written
    # No crash loop: at most the one reset that gives a grown GC heap's memory back to MQTT
    # (esp32-tight); none where MQTT stayed connected.
    assert dev.boots <= (2 if profile == "esp32-tight" else 1), "\n".join(dev.lines)
    nxt = create_job(
        stack_session, dev.board.name, {"operation": "config", "set": {"settings": {"a": 1}}}
    )
    assert final(stack_session, dev.board.name, nxt)["status"] == "SUCCEEDED"


NOMEM = """
from iotjobs.board import nomem
cases = [MemoryError(), OSError(12), OSError(-17040), OSError(-0x7F00), OSError(-0x2880),
         OSError(-0x4D80), OSError(110), OSError(-0x2700), OSError(-1), OSError("x")]
print(" ".join("1" if nomem(e) else "0" for e in cases))
"""


def test_memory_failures_of_a_tls_session_are_told_from_network_errors(
    micropython: Callable[..., object],
) -> None:
    # MemoryError, ENOMEM (no room for the record buffers) and mbedTLS's allocation failures
    # (e.g. -17040, RSA_PUBLIC_FAILED + MPI_ALLOC_FAILED) end the job naming memory; a timeout,
    # a certificate that does not verify (-0x2700) or a closed socket are retried as before.
    out = micropython(NOMEM).check().out.split()  # type: ignore[attr-defined]
    assert out == ["1", "1", "1", "1", "1", "1", "0", "0", "0", "0"]


def test_a_bundle_that_cannot_fit_is_reported_from_a_fresh_heap(
    stack_session: Stack, boards: Boards, signing: Path
) -> None:
    # On esp32-tight a bundle job's code grows the GC heap into the IDF heap and keeps it: its
    # HTTPS session does not fit (FAILED naming memory, decided and persisted), and then neither
    # does the MQTT session that would report it. The agent resets once, as a reset gives the
    # memory back, reports from the fresh boot, and takes the next job; never a loop.
    dev = one_session_board(stack_session, boards, signing, profile="esp32-tight", tls_sessions=0)
    doc, extra = otajob.prepare_bundle(
        stack_session, otajob.build_bundle({"a.py": b"A = 1\n"}), "app-2", key=signing
    )
    job = unique("bundle")
    stack_session.iot_client().create_job(
        jobId=job, targets=[arn(stack_session, dev.board.name)], document=json.dumps(doc), **extra
    )
    ex = final(stack_session, dev.board.name, job, timeout=90)
    reason = details(ex).get("reason", "")
    assert ex["status"] == "FAILED" and reason.startswith("out of memory"), reason
    assert dev.boots <= 2, "\n".join(dev.lines)  # at most the one reset that frees the memory
    assert not (dev.board / "app").exists()  # nothing of the bundle was used
    nxt = create_job(
        stack_session, dev.board.name, {"operation": "config", "set": {"settings": {"b": 2}}}
    )
    assert final(stack_session, dev.board.name, nxt)["status"] == "SUCCEEDED"


# What both apps below use to leave no room for MQTT: fill the IDF heap to its last 4 KB.
HOG_IDF = """\
_hog = []


def _idf_free():
    import esp32

    return sum(r[1] for r in esp32.idf_heap_info(esp32.HEAP_DATA))


def _hog_idf():
    try:
        while _idf_free() > 4096:
            _hog.append(bytearray(1024))
    except MemoryError:
        pass
    print("hogged: %d bytes of IDF heap free" % _idf_free())
"""

# A product's main.py whose `hog` job leaves the GC heap grown into the IDF heap at the next
# reconnect (as a job's code can: MicroPython gives a grown area back only once it is empty),
# so that MQTT no longer fits while no job is under way.
HOG_APP = (
    """\
from iotjobs import agent, app
"""
    + HOG_IDF
    + """

async def hog(ctx, doc):
    link = ctx.link
    make = link._factory

    def factory():
        link._factory = make
        _hog_idf()
        return make()

    link._factory = factory
    return {"reason": "armed"}


agent.register("hog", hog)
app.run()
"""
)


def test_an_idle_board_whose_mqtt_session_no_longer_fits_resets_once_for_a_fresh_heap(
    stack_session: Stack, boards: Boards
) -> None:
    # No job is under way, MQTT connected earlier in this boot, and now its session does not
    # fit for lack of memory: the board resets (once: memreset.json rate-limits it) instead of
    # retrying for ever, and the fresh boot connects and takes the next job.
    with FaultProxy("127.0.0.1", stack_session.endpoints["mqtt_port"]) as proxy:
        dev = boards(stack_session, unique("hog"), app=True, start=False, port=proxy.port)
        (dev.board / "approot" / "main.py").write_text(HOG_APP)
        dev.start()
        dev.wait_for("no pending job")
        job = create_job(stack_session, dev.board.name, {"operation": "hog"})
        assert final(stack_session, dev.board.name, job)["status"] == "SUCCEEDED"
        mark = dev.mark()
        proxy.cut_all()
        dev.wait_for("hogged", since=mark)
        dev.wait_for("with no job; resetting for a fresh heap", since=mark)
        boot2 = dev.lines.index(dev.wait_for("power on (boot 2", since=mark))
        dev.wait_for("no pending job", since=boot2)
        assert (dev.board / "memreset.json").exists()
        nxt = create_job(
            stack_session, dev.board.name, {"operation": "config", "set": {"settings": {"c": 3}}}
        )
        assert final(stack_session, dev.board.name, nxt)["status"] == "SUCCEEDED"
        assert dev.boots == 2, "\n".join(dev.lines)


# A product's main.py whose `wedge` job leaves no room for the MQTT session at any connect of
# a boot that still holds the job's state (as a job's state and code can on a tight board):
# without a way out, the board would retry MQTT for ever and the job's report would never go.
WEDGE_APP = (
    """\
import os

from iotjobs import agent, app, transport
"""
    + HOG_IDF
    + """
_connect = transport.Transport.connect


def _hogging_connect(self):
    _hog_idf()
    return _connect(self)


async def wedge(ctx, doc):
    transport.Transport.connect = _hogging_connect
    ctx.link.drop("wedge")
    return {"reason": "decided"}


try:
    os.stat(agent.STATE_FILE)
    transport.Transport.connect = _hogging_connect
except OSError:
    pass
agent.register("wedge", wedge)
app.run()
"""
)


def test_a_job_whose_state_leaves_no_room_for_mqtt_is_given_up_and_its_report_still_sent(
    stack_session: Stack, boards: Boards
) -> None:
    # Two memory resets inside the job (the second with the job decided), then the job is given
    # up on the board: an idle boot connects, and its decision is sent when start-next offers
    # the job again. Never wedged, never a reset loop; the next job runs.
    dev = boards(stack_session, unique("wedge"), app=True, start=False)
    (dev.board / "approot" / "main.py").write_text(WEDGE_APP)
    dev.start()
    dev.wait_for("no pending job")
    job = create_job(stack_session, dev.board.name, {"operation": "wedge"})
    ex = final(stack_session, dev.board.name, job, timeout=90)
    assert ex["status"] == "SUCCEEDED" and details(ex)["reason"] == "decided", "\n".join(dev.lines)
    assert any("given up on the board" in line for line in dev.lines), "\n".join(dev.lines)
    assert dev.boots == 4, "\n".join(dev.lines)
    assert not (dev.board / "gaveup.json").exists()
    nxt = create_job(
        stack_session, dev.board.name, {"operation": "config", "set": {"settings": {"w": 1}}}
    )
    assert final(stack_session, dev.board.name, nxt)["status"] == "SUCCEEDED"
    assert dev.boots == 4, "\n".join(dev.lines)


# A heap holding more than room()'s 36 KB, and 2 KB of garbage on it (before: what it holds).
FULL_HEAP = """
gc.collect()
keep = []
while gc.mem_alloc() < 40000:
    keep.append(bytearray(1000))
junk = [bytearray(100) for _ in range(20)]
junk = None
before = gc.mem_alloc()
"""

ROOM = (
    """
import asyncio, gc
from iotjobs import agent
"""
    + FULL_HEAP
    + """
asyncio.run(agent.room())
print("LOW", gc.mem_free(), before - gc.mem_alloc())
keep = None
gc.collect()
junk = [bytearray(100) for _ in range(20)]
junk = None
before = gc.mem_alloc()
asyncio.run(agent.room())
print("HIGH", gc.mem_free(), before - gc.mem_alloc())
"""
)


REQUEST_ROOM = (
    """
import asyncio, gc
from iotjobs import agent

class Link:
    t = None
    attempts = 0
    def set_on_connect(self, fn):
        pass
    async def ensure(self):
        return Transport()

class Transport:
    def publish(self, topic, msg):
        pass

class Board:
    def rand(self, n):
        return 1

class Stop(Exception):
    pass

a = agent.Agent({"thing_name": "t", "backoff_min_ms": 10}, Board(), Link())
"""
    + FULL_HEAP
    + """
freed = []

def build(token):
    freed.append(before - gc.mem_alloc())
    raise Stop

try:
    asyncio.run(a._request("$aws/things/t/jobs/start-next", build))
except Stop:
    pass
print("FREED", freed[0])
"""
)


def test_a_request_on_a_full_heap_collects_before_its_json(
    micropython: Callable[..., object],
) -> None:
    # Agent._request awaits room() before it builds the request: on a job's nearly full heap
    # the GC pass runs in a stretch of its own, not inside the request's JSON (bench.guest:
    # 0.6-0.7 ms stretches at the new firmware's first reports).
    out = micropython(REQUEST_ROOM, profile="esp32-plain").check().out  # type: ignore[attr-defined]
    freed = int(out.split("FREED")[1])
    assert freed >= 2000, out  # the junk went before build() ran


def test_room_collects_when_the_gc_heap_holds_much_not_by_gc_mem_free(
    micropython: Callable[..., object],
) -> None:
    # agent.room(), before a job's lazy imports: a GC pass of its own when the GC heap holds
    # more than 36 KB (less than 20 KB left of the 56 KB first area), none otherwise. Not
    # gc.mem_free(): on ESP32 it also counts the IDF heap's largest free block (what the heap
    # could grow by: 82 KB on esp32-plain), so it would never say low there.
    out = micropython(ROOM, profile="esp32-plain").check().out  # type: ignore[attr-defined]
    got = {x.split()[0]: [int(n) for n in x.split()[1:]] for x in out.splitlines()}
    mem_free, freed = got["LOW"]
    assert mem_free > 40_000 and freed >= 2000, out  # the junk went in room()'s pass
    mem_free, freed = got["HIGH"]
    assert freed < 1000, out  # a heap with room: no pass (the junk is still there)
