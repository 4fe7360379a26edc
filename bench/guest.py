"""The agent as a guest in the sensor's application, a part of ``make bench`` (not a test).

    python -m bench.guest [--runs N] [--named M] [--profile P] [--profile-pieces]
                          [--no-attribution]

A simulated board (the stock-firmware port, ``lib/`` as .mpy, the profile's memory model, its
folder on tmpfs where there is one) runs the example application (``examples/sensor``: a 100 ms
sampling tick) beside the agent, plus a probe task that yields (``asyncio.sleep_ms(0)``) in a
loop and records the time between two of its turns: a stretch some other task (the agent, or
the sensor's few lines) held the loop. The board takes a full signed 1 MiB OTA job (HTTPS
download, SHA-256, ECDSA, set_boot, reset, self-test, confirm) while an operator's MQTT client
collects the readings (one per second here: ``publish_every`` 10; the example's default is
5 s). ``--runs`` jobs (3) give the figures; ``--named`` more (1), interleaved with them, run
with the attribution instrument below, which names the stretches: its wrappers add garbage
(GC passes) and time to the stretches they name, so its runs' figures are not the headline's
(``--no-attribution``: none of them). Per run:

- the largest lateness of a sampling tick outside TLS handshakes, and apart for ticks during
  which a handshake ran, with the number of handshakes during the job;
- readings lost across the job: gaps in each boot's sequence numbers, messages the agent's
  queue dropped, samples missed outside handshakes; the reboot's own gap (time between the old
  firmware's last reading and the new one's first) reported apart;
- the longest stretch the loop was held without a yield outside handshakes (and how many
  stretches passed 0.5 ms): wall-clock time on this x86 port less the time the OS kept the
  process waiting for a CPU (/proc/self/schedstat) and less the attribution's own bookkeeping;
  and the same with the simulator's stand-ins for firmware C code taken out (esp32.NVS's
  methods; esp32.Partition is C on the board port, and set_boot's whole-image check runs right
  before the reset, in the reboot's gap, otaboot.activate);
- every stretch over 0.5 ms outside handshakes, named: the probe wraps the agent's coroutines
  and its plain functions that can take long (files, imports, flash, TLS and MQTT packets) when
  their module is imported, each charging its own time (not its callees') to its name, plus
  'import:x' for each import, 'gc~us' when a GC pass ran in the stretch (what one costs
  then) and 'off-cpu' when the process left the CPU in it: 'preempted' when the OS kept it
  waiting for a CPU (that wait is taken out, not the cold caches after it), 'blocked' when it
  left without waiting for one (a blocking system call: its time is in the stretch). The
  wrappers (and the probe's code) take ~10 KB of the board's heap (measure()): the board gets
  ``ATTRIBUTION_ROOM`` (24 KB) more, so it collects a little less often than the profile
  would (the runs without them run on the profile as it is); without them, a stretch is named
  by the job's step, 'gc~us' and 'off-cpu' only;
- the boot after the reset (CPU before the application is imported: no loop exists yet) and
  the first stretch of the new firmware's loop.

``--profile-pieces`` prints every stretch over 0.5 ms (handshakes too) with the agent
functions that ran in it, in order.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobsctl import boardmodel, image, otajob
from jobsctl.checkout import ROOT, unix_port
from jobsctl.devcheck import HOT_PATHS
from jobsctl.device import DeviceProcess, device_env, setup_board
from jobsctl.errors import JobsctlError
from jobsctl.stack import Stack

from .memory import final

EXAMPLE = ROOT / "examples" / "sensor"
SLOT = 0x180000
EVERY = 10  # samples per reading in the bench: one a second

# The bench's application: the example sensor, and the probe whose figures go into each reading
# (the largest gap since the previous reading, outside and during handshakes, and how many gaps
# outside handshakes passed 0.5 ms).
PROBE_APP = """\
import asyncio
import builtins
import gc
import sys
import time

# Boot (this boot's process): the CPU time it ran before the application was imported, i.e.
# before the asyncio loop exists (the bootloader's stand-in, boot.py, the agent's imports, config).
_f = open("/proc/self/schedstat", "rb")
_fs = open("/proc/stat", "rb")  # its first line: the machine's CPU time, by kind
_b = bytearray(160)  # the first line of either, whole
# us on a CPU, us waiting for one, times scheduled onto one; the machine's steal time in ticks
# of 10 ms (its hypervisor ran something else on its virtual CPUs: invisible to the first three)
_s = [0, 0, 0, 0]


def _stat():
    _f.seek(0)
    n = _f.readinto(_b)
    x = bytes(_b[:n]).split()
    _s[0] = int(x[0]) // 1000
    _s[1] = int(x[1]) // 1000
    _s[2] = int(x[2])
    _fs.seek(0)
    n = _fs.readinto(_b)
    _s[3] = int(bytes(_b[:n]).split()[8])  # "cpu user nice system idle iowait irq softirq steal"


_stat()
_boot_cpu = _s[0]

import esp32
import sensor

# Per reading window: the longest hold outside handshakes [0] and where it was [4], the longest
# during a handshake [1], holds over 0.5 ms [2], gaps the OS preempted [3], stretches with steal
# time in them [5] (left out of [0], [2], [10], [11]: the hypervisor's, not the process's, and
# in ticks of 10 ms, too coarse to take out); the longest hold's
# attribution [7:10]: whether a GC pass ran in it, the simulator's own time in it (_sim_wrap:
# C code on a board), and what ran in it. [10]: the longest hold with the simulator's time taken
# out; [11]: holds over 0.5 ms once that is out. ([6]: unused.)
_g = [0, 0, 0, 0, None, 0, 0, 0, 0, "", 0, 0]
_sim = [0]  # us spent in the simulator's stand-ins for firmware C code (see _sim_wrap)

# ---- attribution: every function of the agent's modules (iotjobs.*: module functions, class
# methods, coroutines) is wrapped, when its module is imported, to charge the time it runs (its
# own, not its callees') to its name; a coroutine is charged per resume. Each stretch between two
# turns of the probe is then named by what ran in it. The hot paths (devcheck.HOT_PATHS) are not
# wrapped: their time is their caller's. The wrappers' own bookkeeping (_ovh) is measured and
# taken out of each stretch.
_FN = type(lambda: 0)
_GENF = type(lambda: (yield))
_GEN = type((lambda: (yield))())
_HOT = HOT_NAMES
_APP = ("app._main", "app._guest")  # the application's task: its time is "(app/loop)"
# Wrapped: every coroutine, and the plain functions with these names (files, GC passes,
# imports, flash, TLS and MQTT packets, checks): each wrapper takes the board's heap.
_SYNC = SYNC_NAMES
_stk = [""]  # what runs now: [-1]; "" = no agent function (the application, asyncio, the probe)
_clk = [time.ticks_us()]
_acc = {}  # name -> us in the current stretch
_ovh = [0]  # us of this bookkeeping in the current stretch
_seq = []  # the agent functions called in the current stretch, in order (the first 24)


def _charge(k):
    # Ends the current piece (k: what ran in it) and starts the next.
    n = time.ticks_us()
    _acc[k] = _acc.get(k, 0) + time.ticks_diff(n, _clk[0])
    e = time.ticks_us()
    _ovh[0] += time.ticks_diff(e, n)
    _clk[0] = e


def _fn(f, name):
    def w(*a, **k):
        _charge(_stk[-1])
        _stk.append(name)
        if len(_seq) < 24 and (not _seq or _seq[-1] != name):
            _seq.append(name)
        try:
            r = f(*a, **k)
        finally:
            _charge(name)
            _stk.pop()
        return _Co(r, name) if type(r) is _GEN else r

    return w


class _Co:
    # A coroutine of the agent's, charged per resume.
    def __init__(self, g, name):
        self.g = g
        self.n = name

    def __iter__(self):
        return self

    def __await__(self):
        return self

    def __next__(self):
        return self.send(None)

    def send(self, v):
        _charge(_stk[-1])
        _stk.append(self.n)
        try:
            return self.g.send(v)
        finally:
            _charge(self.n)
            _stk.pop()

    def throw(self, *a):
        _charge(_stk[-1])
        _stk.append(self.n)
        try:
            return self.g.throw(*a)
        finally:
            _charge(self.n)
            _stk.pop()

    def close(self):
        return self.g.close()


def _wrap(m, mod):
    # Wraps what is not wrapped yet (a wrapper is a closure: not _FN/_GENF). No mark on the
    # module: an attribute more would grow its dict.
    short = mod[8:]
    d = m.__dict__
    for k in list(d):
        v = d[k]
        t = type(v)
        name = short + "." + k
        if (t is _GENF or t is _FN and k in _SYNC) and k not in _HOT and name not in _APP:
            d[k] = _fn(v, name)
        elif t is type:
            c = v.__dict__
            for kk in list(c):
                f = c[kk]
                t = type(f)
                if (t is _GENF or t is _FN and kk in _SYNC) and (k + "." + kk) not in _HOT:
                    setattr(v, kk, _fn(f, short + "." + k + "." + kk))


def _wrap_new(names):
    _charge(_stk[-1])
    for k in names:
        # protocol's small pure functions are not wrapped (the wrappers cost the board's heap):
        # their time is their callers'.
        if k.startswith("iotjobs.") and k != "iotjobs.protocol" and k in sys.modules:
            _wrap(sys.modules[k], k)
    e = time.ticks_us()
    _ovh[0] += time.ticks_diff(e, _clk[0])
    _clk[0] = e


_imp = builtins.__import__


def _import(name, g=None, l=None, fl=(), lv=0):
    if lv:
        print("E bench.guest: relative import of %r under the attribution hook" % name)
        raise ImportError(name)
    _charge(_stk[-1])
    n = "import:" + name
    _stk.append(n)
    if len(_seq) < 24:
        _seq.append(n)
    new = name not in sys.modules
    try:
        m = _imp(name, g, l, fl, lv)
    finally:
        _charge(n)
        _stk.pop()
    if new:
        # Only the module this import loaded (one it loads in turn comes through here too):
        # scanning every module at every import (a module body's imports of loaded ones
        # included) made ~20-40 KB of garbage per job-time import, and so GC passes inside
        # the stretches measured.
        _wrap_new((name,))
    return m


if ATTRIBUTE:
    builtins.__import__ = _import
    _wrap_new(list(sys.modules))


def _sim_wrap(owner, name):
    # esp32.NVS's methods (ESP-IDF's nvs_* API: the security counter) are C in the firmware; here
    # they are the simulator's Python (sim/esp32nvs.py), timed apart. esp32.Partition (set_boot's
    # whole-image check, mark_app_valid's otadata write) is C on the board port as on a board.
    f = getattr(owner, name)
    n = "sim." + name

    def w(*a):
        _charge(_stk[-1])
        _stk.append(n)
        _stat()
        w0 = _s[1]
        t = time.ticks_us()
        try:
            return f(*a)
        finally:
            d = time.ticks_diff(time.ticks_us(), t)
            _stat()
            _sim[0] += d - (_s[1] - w0)  # less the time the OS kept it waiting (as the probe)
            _charge(n)
            _stk.pop()

    setattr(owner, name, w)


import esp32nvs  # the simulator's NVS (imported here: a board has it built in)

for _k in ("get_i32", "set_i32", "get_blob", "set_blob", "commit"):
    _sim_wrap(esp32nvs.NVS, _k)
_stat()
_charge(_stk[-1])
_acc.clear()
_ovh[0] = 0
_seq.clear()
_t0 = (_s[1], _s[2], _s[3], gc.mem_alloc(), time.ticks_us())


def _off(pc, w, w1, st):
    # Whether the process left the CPU in a stretch: 0 no, 1 blocked (scheduled again without
    # waiting for a CPU: a blocking system call), 2 preempted (it waited for one), 3 stolen (the
    # machine's hypervisor took a CPU from it: steal time).
    return 3 if _s[3] != st else 0 if _s[2] == pc else 2 if w1 != w else 1


def _top(n):
    xs = sorted(_acc.items(), key=lambda x: -x[1])[:n]
    return " ".join("%s=%d" % (k or "(app/loop)", v) for k, v in xs if v > 20)


def _line(kind, s, g, ds, at, flag, off):
    # kind, reading seq, us, us less the simulator's, the simulator's, the job's step, GC pass
    # or handshake (1/0), boot, the process left the CPU in it (1/0), what ran (name=own us;
    # gc~us: a GC pass ran in it, and what one costs now: a gc.collect() timed here, outside
    # any stretch), "|", the agent functions called, in order.
    top = _top(8)
    if kind == "job" and flag and g - ds > 500:
        t = time.ticks_us()
        gc.collect()
        top += " gc~%d" % time.ticks_diff(time.ticks_us(), t)
    return "%s %d %d %d %d %s %d %s %d %s | %s\\n" % (
        kind, s.seq, g, g - ds, ds, at, flag, s.boot, off, top, " ".join(_seq)
    )


def _marks(agent):
    # What the agent did, seen from outside: requests sent, messages sent for the application,
    # MQTT bytes last read, link state.
    t = agent.link.t
    g = t._sock if t is not None else None
    return (agent._n, agent.sent, g.rx_ticks if g is not None else None, t is None)


def _log(line):
    # Every stretch over 0.5 ms, named, into a file of the board's folder (bench.guest reads it).
    with open("holds.txt", "a") as f:
        f.write(line)


async def _probe(agent, s):
    # The first stretch starts when this module was imported (_t0): what held the loop before
    # the probe's first turn (the application's start, the agent's if it ran first) is logged
    # apart ("start").
    w, pc, st, m, t = _t0
    k = _marks(agent)
    sim = _sim[0]
    hs = 0
    first = True
    while True:
        now = time.ticks_us()
        _charge(_stk[-1])
        ov = _ovh[0]
        _stat()
        w1 = _s[1]
        m1 = gc.mem_alloc()
        g = time.ticks_diff(now, t) - (w1 - w) - ov
        if w1 != w:
            _g[3] += 1
        h = agent.handshakes()
        ds = _sim[0] - sim
        j = agent._job  # what the agent was at (a bench's look inside)
        at = ((j.get("data") or {}).get("step") or j.get("op") or "starting") if j else "idle"
        if first:
            first = False
            # What held the loop before the probe's first turn (the agent's start, the first
            # MQTT connect): in the log, not in the reading's figures.
            _log(_line("start", s, g, ds, at, h != hs, _off(pc, w, w1, st)))
        elif h != hs:
            if g > _g[1]:
                _g[1] = g
            if g > 500:
                _log(_line("hs", s, g, ds, at, m1 < m, _off(pc, w, w1, st)))
        elif _s[3] != st:
            _g[5] += 1
            if g > 300:
                _log(_line("job", s, g, ds, at, m1 < m, 3))
        else:
            if g > _g[0]:
                _g[0] = g
                _g[4] = at
                _g[7] = 1 if m1 < m else 0
                _g[8] = ds
                k1 = _marks(agent)
                _g[9] = ",".join(
                    n for n, a, b in zip(("request", "app-send", "mqtt-read", "link-down"), k, k1)
                    if a != b
                ) + " " + _top(4)
            if g - ds > _g[10]:
                _g[10] = g - ds
            if g > 500:
                _g[2] += 1
                if g - ds > 500:
                    _g[11] += 1
            if g > 300:  # logged from 0.3 ms: each step's longest, and the ones over 0.5 ms
                _log(_line("job", s, g, ds, at, m1 < m, _off(pc, w, w1, st)))
        hs = h
        k = _marks(agent)
        sim = _sim[0]
        _stat()
        w = _s[1]
        m = gc.mem_alloc()
        pc = _s[2]
        st = _s[3]
        _charge(_stk[-1])
        _acc.clear()
        _seq.clear()
        _ovh[0] = 0
        t = time.ticks_us()
        await asyncio.sleep_ms(0)


def _figures():
    r = {"hold_us": _g[0], "hold_hs_us": _g[1], "holds_over": _g[2], "preempted": _g[3],
         "hold_at": _g[4], "hold_gc": _g[7], "stolen": _g[5],
         "hold_sim_us": _g[8], "hold_what": _g[9], "hold_nosim_us": _g[10],
         "over_nosim": _g[11], "boot_cpu_us": _boot_cpu}
    _g[0] = _g[1] = _g[2] = _g[3] = _g[5] = _g[7] = _g[8] = _g[10] = _g[11] = 0
    _g[4] = None
    _g[9] = ""
    return r


async def main(agent):
    s = sensor.sensor = sensor.Sensor(agent)
    asyncio.create_task(_probe(agent, s))
    s.extra = _figures

    def may_reboot():
        # Right before set_boot and the reset (otaboot.activate): the window's figures go out
        # now, or the reset would lose them with the reading not yet published.
        if not s.may_update():
            return False
        s.publish()
        agent.pump()
        return True

    agent.may_start = s.may_update
    agent.may_reboot = may_reboot
    await s.run()
"""


@dataclass
class Run:
    status: str
    late_ms: int  # largest tick lateness outside handshakes, during the job
    late_hs_ms: int  # during handshakes
    handshakes: int
    lost: int  # readings lost (sequence gaps + queue drops) outside the reboot
    missed: int  # samples missed outside handshakes
    reboot_gap_s: float
    hold_us: int
    hold_at: str  # the job's step (or "idle") when the longest hold happened
    hold_hs_us: int
    holds_over: int
    preempted: int  # gaps during which the OS ran something else (that time taken out)
    stolen: int  # stretches with the machine's steal time in them (left out of the figures)
    readings: int
    idle_hold_us: int  # the same probe with the agent idle, before the job (the baseline)
    idle_over: int
    hold_sim_us: int  # the simulator's time inside the longest hold (firmware C on a board)
    hold_what: str  # what the agent did in it (request sent, MQTT read, ...), "gc" if a pass ran
    hold_nosim_us: int  # the longest hold with the simulator's time taken out
    over_nosim: int  # holds over 0.5 ms with it taken out
    # every stretch over 0.5 ms outside handshakes during the job: (us with the simulator's
    # time taken out, us of the simulator's, the job's step, what ran in it: name=own us ...)
    long: list[tuple[int, int, str, str]]
    steps: dict[str, int]  # the longest stretch (stand-ins out) per step of the job, from 0.3 ms
    boot_cpu_us: int  # the new firmware's boot: CPU time before the application's import
    start: tuple[int, bool, str]  # its first stretch: us, a handshake in it, what ran in it


class _Collector:
    def __init__(self, stack: Stack, thing: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from jobsctl.broker import EVENTS_IDENTITY

        creds = stack.events_credentials()
        self.got: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{EVENTS_IDENTITY}-b")
        self.client.tls_set(
            ca_certs=stack.endpoints["ca_file"], certfile=str(creds.cert), keyfile=str(creds.key)
        )
        self.client.on_message = self._on_message
        self.client.connect("localhost", stack.mqtt_port)
        self.client.loop_start()
        self.client.subscribe(f"dt/{thing}/reading", qos=0)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.cond:
            r = json.loads(msg.payload)
            r["_at"] = time.monotonic()
            self.got.append(r)
            self.cond.notify_all()

    def wait(self, n: int, timeout: float) -> list[dict[str, Any]]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.got) >= n, timeout):
                raise JobsctlError(f"bench_guest: {len(self.got)} readings, expected {n}")
            return list(self.got)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _code_copy(dest: Path) -> str:
    """A copy of the simulated board's search path (device_env's MICROPYPATH) under ``dest``."""
    paths = device_env(None)["MICROPYPATH"].split(os.pathsep)
    out = []
    for i, p in enumerate(paths):
        to = dest / str(i)
        shutil.rmtree(to, ignore_errors=True)
        if Path(p).is_dir():
            shutil.copytree(p, to)
        out.append(str(to) if Path(p).is_dir() else p)
    return os.pathsep.join(out)


def measure(stack: Stack, signing: Path, profile: str, i: int, attribute: bool) -> Run:
    """One job on a fresh board; ``attribute``: with the attribution instrument (the wrappers
    that name what ran in each stretch)."""
    name = f"guest-{profile}-{i}" + ("-named" if attribute else "")
    stack.create_thing(name)
    board = setup_board(
        stack.state_dir,
        name,
        partition_size=SLOT,
        extra={"ota_key_file": "k.pem", "settings": {"publish_every": EVERY}},
    )
    shutil.copy(image.public_key_path(signing), board / "k.pem")
    app = board / "app"
    app.mkdir(exist_ok=True)
    for f in EXAMPLE.glob("*.py"):
        shutil.copy(f, app / f.name)
    (app / "application.py").write_text(
        PROBE_APP.replace("HOT_NAMES", repr(HOT))
        .replace("SYNC_NAMES", repr(SYNC))
        .replace("ATTRIBUTE", str(attribute))
    )
    data = image.build_app_image("2.0.0", size=1024 * 1024)
    doc, extra = otajob.prepare(stack, data, key=signing)
    # The attribution's wrappers take the board's heap (~10 KB measured): the first GC area
    # gets ATTRIBUTION_ROOM more, and so does the IDF region the GC heap grows into (a growth
    # takes up to the heap's size so far), so that the agent has the profile's room.
    p = boardmodel.profile(profile)
    env = p.env()
    heap = p.gc_first
    if attribute:
        heap += ATTRIBUTION_ROOM
        regions = [int(n) for n in env["SIM_IDF_HEAP"].split(",")]
        regions[-1] += ATTRIBUTION_ROOM
        env["SIM_IDF_HEAP"] = ",".join(map(str, regions))
    # The board's code (lib/ as .mpy, what a board keeps in its flash filesystem) beside its
    # folder, on tmpfs too: an import then reads it in CPU time, not the host disk's I/O waits
    # (seen: job-time imports blocked in the kernel's page-cache read of a .mpy, perf sched).
    env["MICROPYPATH"] = _code_copy(board.parent / "code")
    dev = DeviceProcess(board, profile=profile, env=env, heapsize=f"{heap // 1024}k")
    col = _Collector(stack, name)
    try:
        dev.start()
        dev.wait_for("no pending job", timeout=60)
        n0 = len(col.wait(6, timeout=30))  # 5 s of an idle agent after the first: baseline
        mark = dev.mark()
        arn = f"arn:aws:iot:{stack.endpoints['region']}:{stack.endpoints['account_id']}"
        stack.iot_client().create_job(
            jobId=name, targets=[f"{arn}:thing/{name}"], document=json.dumps(doc), **extra
        )
        ex = final(stack, name, name, timeout=180)
        got = col.wait(len(col.got) + 3, timeout=30)  # three more on the new firmware
    except JobsctlError:
        print("\n".join(dev.lines[-20:]), file=sys.stderr)  # the board's console: why
        raise
    finally:
        col.close()
        dev.power_off()
    lines = dev.lines[mark:]
    if ex["status"] != "SUCCEEDED":  # say why on stderr (the row counts it)
        print(f"bench_guest: {name} {ex['status']}: {ex.get('statusDetails')}", file=sys.stderr)
        print("\n".join(lines[-20:]), file=sys.stderr)
    # TLS handshakes during the job: MQTT sessions (console) and the download's HTTPS session(s)
    handshakes = sum("connected, subscribed" in x for x in lines) + sum(
        "step download" in x or "resuming download" in x for x in lines
    )
    boots: dict[str, list[dict[str, Any]]] = {}
    for r in got:
        boots.setdefault(r["boot"], []).append(r)
    old = got[n0 - 1]["boot"]
    job = got[n0:]  # readings whose window overlapped the job, and three after it
    lost = max(r["dropped"] for r in got)
    for rs in boots.values():
        seqs = [r["seq"] for r in rs]
        lost += (seqs[-1] - seqs[0] + 1) - len(set(seqs))
    new = [r for r in got if r["boot"] != old]
    last_old = max(r["_at"] for r in boots[old])
    first_new = min(r["_at"] for r in new) if new else last_old
    top = max(job, key=lambda r: r["hold_us"])
    what = (top["hold_what"].strip() + (" gc" if top["hold_gc"] else "")).strip()
    # The probe's log of every stretch over 0.5 ms (both boots), named by what ran in it.
    long: list[tuple[int, int, str, str]] = []
    steps: dict[str, int] = {}
    start = (0, False, "")
    seq0 = got[n0]["seq"]
    log = (board / "holds.txt").read_text() if (board / "holds.txt").exists() else ""
    for x in log.splitlines():
        head = x.partition(" | ")[0]
        kind, seq, _g, nosim, sim, at, flag, boot, off, *names = head.split(" ")
        if PROFILING:
            print("  stretch", x)
        if kind == "start" and boot != old:
            start = (int(nosim), flag == "1", " ".join(names))
        elif kind == "job" and (boot != old or int(seq) >= seq0):
            step = at + ("" if boot == old else " (new firmware)")
            if off != STOLEN:
                steps[step] = max(steps.get(step, 0), int(nosim))
            if int(nosim) > 500:
                # off-cpu: the process left the CPU (a GC pass: "gc~us" in the names)
                more = {"1": " off-cpu blocked", "2": " off-cpu preempted"}.get(off, "")
                more = more if off != STOLEN else f" {STOLEN_TAG}, not in the figures"
                long.append((int(nosim), int(sim), at, " ".join(names) + more))
    boot_cpu = new[0]["boot_cpu_us"] if new else 0
    return Run(
        str(ex["status"]),
        max(r["late_ms"] for r in job),
        max(r["late_hs_ms"] for r in job),
        handshakes,
        lost,
        sum(r["missed"] for r in job if r["late_hs_ms"] == 0),
        first_new - last_old,
        top["hold_us"],
        str(top["hold_at"]),
        max(r["hold_hs_us"] for r in job),
        sum(r["holds_over"] for r in job),
        sum(r["preempted"] for r in job),
        sum(r["stolen"] for r in job),
        len(job),
        max(r["hold_us"] for r in got[1:n0]),
        sum(r["holds_over"] for r in got[1:n0]),
        top["hold_sim_us"],
        what or "-",
        max(r["hold_nosim_us"] for r in job),
        sum(r["over_nosim"] for r in job),
        long,
        steps,
        boot_cpu,
        start,
    )


HOLDS = ROOT / "bench" / "guest_holds.py"
STOLEN = "3"  # the probe's mark of a stretch with steal time in it (_off)
STOLEN_TAG = "off-cpu stolen"
PROFILING = False
ATTRIBUTION_ROOM = 24 * 1024
# The hot paths (devcheck.HOT_PATHS: per block, per message) are not wrapped by the probe's
# attribution: their time counts as their caller's.
HOT = sorted({f for _, f in HOT_PATHS})
# The plain (not async) functions the attribution wraps, by name (in any module or class): the
# pieces that can be long (a file, a GC pass, an import, flash, a TLS or MQTT packet, a check).
# Every other plain function's time is its caller's; a wrapper costs the board ~100 bytes.
SYNC = [
    *("save", "_forget", "unload", "_resolve", "_rare", "persist", "log", "_clear", "close"),
    *("_on_connect", "connect", "publish", "subscribe", "_deliver", "_send", "_read", "pause"),
    *("drop", "update_slot", "running_slot", "firmware_version", "mem", "tls_room", "read"),
    *("app_version", "app_secure_version", "erase", "activate", "confirm", "rollback"),
    *("_connect", "_line", "open", "_request", "parse", "check", "_erase_head", "hexdigest"),
    *("load_pubkey", "parse_sig", "_stored", "floor", "flush", "deliver", "count_boot", "big"),
    *("link_failed", "clean_details"),
]


def holds(tmp: Path, signing: Path, profile: str) -> dict[str, tuple[int, int]]:
    """The agent's pieces of work between two yields, each timed alone (bench/guest_holds.py):
    name -> (least, median) microseconds."""
    import hashlib
    import subprocess

    board = tmp / "holds"
    board.mkdir()
    image.init_sim_flash(board, version="1.0.0", partition_size=SLOT)
    data = image.build_app_image("2.0.0", size=1024 * 1024)
    (board / "img.bin").write_bytes(data)
    args = [str(image.public_key_path(signing)), image.sign(data, signing)]
    args += [hashlib.sha256(data).hexdigest(), "img.bin"]
    r = subprocess.run(
        [str(unix_port()), str(HOLDS), *args],
        env=device_env(profile),
        cwd=board,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if r.returncode != 0:
        raise JobsctlError(f"bench_guest: {HOLDS.name} failed: {r.stderr.strip()[-300:]}")
    out = {}
    for line in r.stdout.splitlines():
        name, least, median = line.split()
        out[name] = (int(least), int(median))
    return out


# The simulated board's folder (its flash and filesystem) on tmpfs where there is one: a file
# write then costs its CPU time, not the host disk's I/O waits (ext4 flushes a file replaced
# by a rename), which are neither the agent's CPU nor a board's.
SHM = Path("/dev/shm")


def run(
    tmp: Path, runs: int, profile: str = boardmodel.DEFAULT, named: int = 1
) -> tuple[list[Run], list[Run], Any]:
    """``runs`` jobs without the attribution instrument (the figures), ``named`` with it (what
    names the stretches: its wrappers add garbage and time to the stretches they name, so its
    figures are not the headline's), interleaved; and the pieces timed alone."""
    out: list[Run] = []
    attributed: list[Run] = []
    where = SHM if SHM.is_dir() else tmp
    with (
        tempfile.TemporaryDirectory(prefix="jobsctl-bench-guest-", dir=where) as d,
        Stack(Path(d) / "stack") as stack,
    ):
        signing = otajob.signing_key(tmp / "signing")
        pieces = holds(Path(d), signing, profile)
        for i in range(max(runs, named)):
            for attribute, into in ((False, out), (True, attributed)):
                if i < (named if attribute else runs):
                    r = measure(stack, signing, profile, i, attribute)
                    kind = "named run" if attribute else "run"
                    print(f"bench_guest: {profile} {kind} {i}: {r}", flush=True)
                    into.append(r)
    return out, attributed, pieces


def _per_step(runs: list[Run]) -> str:
    top: dict[str, int] = {}
    for r in runs:
        for k, v in r.steps.items():
            top[k] = max(top.get(k, 0), v)
    return ", ".join(f"{k} {v / 1000:.2f} ms" for k, v in top.items()) or "none over 0.3 ms"


def _stretches(runs: list[Run]) -> str:
    return "; ".join(
        f"run {i}: {n / 1000:.2f} ms at {at} ({names})"
        for i, r in enumerate(runs)
        for n, _, at, names in r.long
    )


def rows(
    runs: list[Run], profile: str, pieces: Any, named: list[Run] | None = None
) -> list[tuple[str, str, str]]:
    """The table's rows: the figures from ``runs`` (without the attribution instrument), the
    names of the stretches from ``named`` (with it)."""
    named = named or []

    def mm(xs: list[float], unit: str, fmt: str = "{:.0f}") -> str:
        return (
            f"max {fmt.format(max(xs))} {unit}, median {fmt.format(statistics.median(xs))} {unit}"
        )

    ok = sum(r.status == "SUCCEEDED" for r in runs)
    what = (
        f"guest: full signed 1 MiB OTA job beside the example sensor ({profile}, {len(runs)} runs)"
    )
    instrument = f"{len(runs)} runs without the attribution instrument" + (
        f" (its wrappers add garbage and time to the stretches they name: {len(named)} more "
        "run(s) with it name them, rows below)"
        if named
        else ""
    )
    if named:
        names = (
            f"named by {len(named)} run(s) with the attribution instrument (its wrappers' "
            f"garbage and bookkeeping are in them: its own longest stretch "
            f"{mm([r.hold_nosim_us / 1000 for r in named], 'ms', '{:.2f}')}, not a figure of "
            f"the agent's): {_stretches(named) or 'none over 0.5 ms'}"
        )
        named_what = f"; the named run's longest, what ran in it: {[r.hold_what for r in named]}"
    else:
        names = "not named (--no-attribution: no run with the attribution instrument)"
        named_what = ""
    return [
        (
            f"{what}: largest lateness of the 100 ms tick outside TLS handshakes",
            mm([r.late_ms for r in runs], "ms"),
            f"goal ≤ 50 ms; {ok}/{len(runs)} SUCCEEDED",
        ),
        (
            f"{what}: largest lateness of a tick during a TLS handshake",
            mm([r.late_hs_ms for r in runs], "ms"),
            f"handshakes during the job (MQTT connects + HTTPS sessions, both boots): "
            f"{sorted({r.handshakes for r in runs})}",
        ),
        (
            f"{what}: readings lost outside the reboot",
            f"{sum(r.lost for r in runs)} of {sum(r.readings for r in runs)}; samples missed "
            f"outside handshakes: {sum(r.missed for r in runs)}",
            f"goal 0; the reboot's gap between readings: "
            f"{mm([r.reboot_gap_s for r in runs], 's', '{:.1f}')}",
        ),
        (
            f"{what}: longest stretch the loop was held without a yield, outside handshakes",
            mm([r.hold_us / 1000 for r in runs], "ms", "{:.2f}"),
            f"goal ≤ 0.5 ms on this x86 port; {instrument}. Wall clock between two turns of a "
            f"probe task, less the time the OS kept the process waiting, /proc/self/schedstat "
            f"(gaps with such waits: {[r.preempted for r in runs]}); stretches with the "
            f"machine's steal time in them (its hypervisor ran something else on its CPUs, "
            f"/proc/stat: left out, listed below when over 0.5 ms): "
            f"{[r.stolen for r in runs]}; where the longest was: "
            f"{[r.hold_at for r in runs]}; stretches over 0.5 ms per job: "
            f"{[r.holds_over for r in runs]}; during handshakes: "
            f"{mm([r.hold_hs_us / 1000 for r in runs], 'ms', '{:.1f}')}; the same probe with "
            f"the agent idle before each job (the machine's own noise): "
            f"{mm([r.idle_hold_us / 1000 for r in runs], 'ms', '{:.2f}')}, over 0.5 ms: "
            f"{[r.idle_over for r in runs]}",
        ),
        (
            f"{what}: the same with the simulator's stand-ins for firmware C code taken out "
            "(esp32.NVS: ESP-IDF's C on a board)",
            mm([r.hold_nosim_us / 1000 for r in runs], "ms", "{:.2f}"),
            f"goal ≤ 0.5 ms; stretches over 0.5 ms per job: {[r.over_nosim for r in runs]}; "
            f"simulator time inside the longest stretch (with it in): "
            f"{[round(r.hold_sim_us / 1000, 1) for r in runs]} ms, what ran in that one "
            f"('(app/loop)': all of it without the instrument; 'gc': a GC pass ran in it): "
            f"{[r.hold_what for r in runs]}{named_what}",
        ),
        (
            f"{what}: every stretch over 0.5 ms outside handshakes with the stand-ins taken out, "
            "named",
            f"{sum(STOLEN_TAG not in x[3] for r in runs for x in r.long)} in {len(runs)} jobs",
            f"without the instrument (gc~us: a GC pass ran in it, and what one costs; off-cpu: "
            f"the process left the CPU in it, preempted: the OS kept it waiting for a CPU, "
            f"blocked: a blocking system call, stolen: the machine's hypervisor took its CPU, "
            f"listed, not counted): {_stretches(runs) or 'none'}; "
            f"{names}; the longest per step of the job, over the runs without the instrument "
            f"(those under 0.3 ms not logged): {_per_step(runs)}",
        ),
        (
            f"{what}: after the reset, before the application's loop exists, and the agent's "
            "start before the application's first turn",
            f"boot CPU {mm([r.boot_cpu_us / 1000 for r in runs], 'ms', '{:.1f}')}; first "
            f"stretch {mm([r.start[0] / 1000 for r in runs], 'ms', '{:.2f}')}",
            "not a hold of the application's loop: the boot (the simulated bootloader's check, "
            "boot.py, main.py's imports, config.json, the agent built) runs before asyncio.run "
            "and the application's own import; it is part of the reboot's gap (readings row). "
            "Of it, the simulated bootloader's check of the new image (the check set_boot makes, "
            f"{pieces.get('set-boot-1MiB-image-sim', (0, 0))[0] / 1000:.1f} ms timed alone) is "
            "the second-stage bootloader's C on a board. "
            "The first stretch: from the application's import to its probe's first turn, "
            f"a TLS handshake in it: {[r.start[1] for r in runs]}; what ran in it: "
            f"{[r.start[2] for r in runs + named]}",
        ),
        (
            "guest: the agent's pieces of work between two yields, each timed alone "
            f"({profile}; least of 15 runs, CPU-bound)",
            "; ".join(f"{k} {v[0] / 1000:.2f} ms" for k, v in pieces.items()),
            "goal ≤ 0.5 ms each. set-boot: the simulated bootloader check of the whole image "
            "(ESP-IDF's esp_image_verify in C on a board, not splittable); "
            "ecdsa-verify-whole: what one check would hold if it did not yield (it yields "
            "after every bit and every 16 bits of its two inversions)",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.guest", description=__doc__)
    parser.add_argument(
        "--runs", type=int, default=3, help="jobs without the attribution instrument (figures)"
    )
    parser.add_argument(
        "--named", type=int, default=1, help="jobs with it (they name the stretches); default 1"
    )
    parser.add_argument("--profile", default=boardmodel.DEFAULT, choices=list(boardmodel.PROFILES))
    parser.add_argument("--profile-pieces", action="store_true")
    parser.add_argument("--no-attribution", action="store_true", help="no named run (--named 0)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.named < 0:
        parser.error("--runs must be at least 1 and --named at least 0")
    global PROFILING
    saved = PROFILING  # the module's default (make bench's) stays for the next run
    PROFILING = args.profile_pieces
    try:
        with tempfile.TemporaryDirectory(prefix="jobsctl-bench-guest-") as t:
            rs, named, pieces = run(
                Path(t), args.runs, args.profile, 0 if args.no_attribution else args.named
            )
    except JobsctlError as exc:
        print(f"jobsctl bench: {exc}", file=sys.stderr)
        return 1
    finally:
        PROFILING = saved
    for a, b, c in rows(rs, args.profile, pieces, named):
        print(f"| {a} | {b} | {c} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
