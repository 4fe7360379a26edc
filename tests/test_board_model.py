"""The simulated board's memory (docs/board-model.md): 32-bit ports, the ESP-IDF heap that mbedTLS
and the GC heap's growth take from, the profiles, and TLS failing where the firmware fails."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

import upy
from bench import memory as bench_memory
from jobsctl import boardmodel
from jobsctl.checkout import MICROPYTHON_FROZEN, MICROPYTHON_NEWEST
from jobsctl.errors import JobsctlError

# Opens N TLS sessions at once to the server (CA-verified, as the device does), after filling
# the GC heap with BALLAST KB of live objects (as the agent's loaded modules fill it); prints the
# IDF heap after each step and how the first session that could not open failed.
SESSIONS = """
import sys, gc, socket, esp32, tls
host, ca = sys.argv[1], sys.argv[3]
port, n, ballast = int(sys.argv[2]), int(sys.argv[4]), int(sys.argv[5])
keep = [bytearray(1000) for _ in range(ballast)]
with open(ca, "rb") as f:
    cadata = f.read()

def free():
    return sum(t[1] for t in esp32.idf_heap_info(esp32.HEAP_DATA))

def session():
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_REQUIRED
    ctx.load_verify_locations(cadata)
    s = socket.socket()
    s.connect(socket.getaddrinfo(host, port)[0][-1])
    try:
        return ctx.wrap_socket(s, server_hostname=host)
    except Exception:
        s.close()
        raise

print("gc", gc.mem_free() + gc.mem_alloc(), "idf", free())
open_ = []
for i in range(n):
    try:
        open_.append(session())
        print("open", i, free())
    except OSError as e:
        print("failed", i, e.args[0])
        break
for s in open_:
    s.close()
gc.collect()
print("closed", free())
try:
    open_ = [session()]
    print("again", free())
except OSError as e:
    print("again failed", e.args[0])
"""


def sessions(tmp_path: Path, https_server, ca, n: int, ballast: int, profile: str) -> list[str]:
    script = tmp_path / "sessions.py"
    script.write_text(SESSIONS)
    args = ("localhost", str(https_server.server_port), str(ca.cert_path), str(n), str(ballast))
    return upy.run(script=script, args=args, profile=profile).check().out.splitlines()


def test_two_tls_sessions_at_once_fail_on_esp32_plain_as_the_firmware_does_and_one_fits(
    tmp_path, https_server, ca
):
    # The agent's .mpy modules fill the first 56 KB GC area, so the heap grows once (56 KB
    # more, from the IDF heap) as on a board; what is left holds one TLS session, not two.
    out = sessions(tmp_path, https_server, ca, 2, 60, "esp32-plain")
    gc_total = int(out[0].split()[1])
    assert gc_total > 100_000, out  # grown once: 56 KB + 56 KB
    assert out[1].startswith("open 0"), out
    # No room for the second session's record buffers: mbedtls_ssl_setup fails with
    # MBEDTLS_ERR_SSL_ALLOC_FAILED, modtls collects once, retries, and raises OSError(ENOMEM).
    assert out[2] == "failed 1 12", out
    # Closing the first session gives its memory back: a new one opens.
    assert out[3].startswith("closed") and out[4].startswith("again"), out


def test_two_tls_sessions_fit_while_the_gc_heap_has_not_grown(tmp_path, https_server, ca):
    # The same board with a small application: the IDF heap holds both sessions, which is why
    # the device code must keep its GC heap in its first area to afford a second session.
    out = sessions(tmp_path, https_server, ca, 2, 20, "esp32-plain")
    assert [line.split()[0] for line in out[1:3]] == ["open", "open"], out
    one, two = int(out[1].split()[2]), int(out[2].split()[2])
    # A session holds ~16.7 KB in + ~4.2 KB out record buffers and its certificates.
    assert 20_000 < one - two < 32_000, out


def test_a_session_that_does_not_fit_fails_the_same_way_on_the_tight_profile(
    tmp_path, https_server, ca
):
    out = sessions(tmp_path, https_server, ca, 2, 60, "esp32-tight")
    assert out[1] == "failed 0 12" and out[3] == "again failed 12", out


def test_the_psram_profile_holds_several_sessions_beside_a_grown_heap(tmp_path, https_server, ca):
    out = sessions(tmp_path, https_server, ca, 3, 200, "esp32-psram")
    assert [line.split()[0] for line in out[1:4]] == ["open"] * 3, out


BUILT_IN = {"MICROPYPATH": ".frozen"}
GROW = """
import gc, esp32
def show():
    info = esp32.idf_heap_info(esp32.HEAP_DATA)
    # gc.mem_free() on ESP32 (MICROPY_GC_SPLIT_HEAP_AUTO, py/modgc.c) counts what the heap could
    # still grow by, the largest free IDF block, beside the free space of its areas.
    total = gc.mem_free() - max(t[2] for t in info) + gc.mem_alloc()
    print(total, [t[1] for t in info])
show()
keep = [bytearray(1000) for _ in range(70)]
show()
keep = None
gc.collect()
show()
try:
    big = [bytearray(1000) for _ in range(200)]
except MemoryError:
    print("MemoryError")
"""


def test_the_gc_heap_grows_from_the_idf_heap_and_gives_the_area_back(micropython):
    # The hardware modules as the board has them: built in (frozen), not compiled into the heap.
    out = micropython(GROW, profile="esp32-plain", env=BUILT_IN).check().out.splitlines()
    first, grown, back = (json.loads("[" + line.replace(" ", ",", 1) + "]") for line in out[:3])
    # The first area, 56000 bytes as mem_info() shows it on a board (give or take the few
    # bytes show() allocates between its calls), nothing taken from the IDF heap.
    assert abs(first[0] - 56000) < 512 and first[1] == [14336, 83968]
    # One growth doubles the heap (py/gc.c), taken from the largest free IDF block.
    assert grown[0] > 110_000 and grown[1][0] == 14336 and grown[1][1] < 83968 - 57344
    # An emptied area is freed back to the IDF heap.
    assert abs(back[0] - 56000) < 512 and back[1] == first[1]
    # No IDF block is large enough for a further growth: MemoryError, as on a board.
    assert out[3] == "MemoryError"


def test_idf_heap_info_lists_the_profiles_regions(micropython):
    for name, p in boardmodel.PROFILES.items():
        r = micropython(
            "import esp32\n"
            "print(esp32.idf_heap_info(esp32.HEAP_DATA), esp32.idf_heap_info(esp32.HEAP_EXEC))",
            profile=name,
            env=BUILT_IN,
        ).check()
        sizes = list(p.internal) + ([p.psram] if p.psram else [])
        assert r.out.split(" [")[0] == repr([(n, n, n - 4, n) for n in sizes]), name
        assert r.out.strip().endswith("[]")


def test_without_a_profile_the_heap_is_fixed_and_nothing_is_modelled(micropython):
    r = micropython(
        "import gc, esp32\n"
        "try:\n    x = bytearray(100_000)\nexcept MemoryError:\n    print('MemoryError')\n"
        "print(esp32.idf_heap_info(esp32.HEAP_DATA))",
        heapsize="64k",
    ).check()
    assert r.out.split() == ["MemoryError", "[]"]


def test_the_port_appends_its_high_water_marks_at_exit_and_at_a_reset(micropython, tmp_path):
    report = tmp_path / "mem.jsonl"
    env = {"SIM_MEM_REPORT": str(report)}
    micropython(
        "import gc\nkeep = [bytearray(1000) for _ in range(70)]\ngc.collect()",
        profile="esp32-plain",
        env=env,
    ).check()
    r = micropython("import machine\nmachine.reset()", profile="esp32-plain", env=env)
    assert r.rc == 3
    first, second = (json.loads(line) for line in report.read_text().splitlines())
    assert first["modelled"] and first["idf_total"] == 98304 and first["gc_first"] == 57344
    assert first["gc_max_total"] > 110_000 and first["gc_max_live"] > 70_000
    assert first["idf_min_free"] < 98304 - 57344
    assert second["gc_max_total"] == 57344


def test_sim_gc_trace_prints_the_live_high_water_the_gc_areas_and_the_idf_peak(micropython):
    # docs/board-model.md: SIM_GC_TRACE=1 shows on stderr, between the console lines, each new
    # live high-water; each area the GC heap takes from the IDF heap (57,360 bytes on
    # esp32-plain: the first area's size, as py/gc.c asks for it; a board's block header makes
    # it 57,364 of the IDF heap) and gives back when it empties; and each 1 KB rise of the IDF
    # heap's high-water: where a job's IDF peak was.
    r = micropython(
        "import gc\nprint('small')\ngc.collect()\nkeep = [bytearray(1000) for _ in range(20)]\n"
        "gc.collect()\nprint('big')\nkeep = None\ngc.collect()\n"
        "keep = [bytearray(1000) for _ in range(70)]\ngc.collect()\nprint('grown')\n"
        "keep = None\ngc.collect()\nprint('back')",
        profile="esp32-plain",
        env={"SIM_GC_TRACE": "1"},
    ).check()
    err = r.err.splitlines()
    marks = [int(x.rsplit(" ", 1)[1]) for x in err if "live high-water" in x]
    assert len(marks) >= 2 and marks == sorted(marks) and marks[-1] - marks[0] > 20_000, r.err
    new = [x for x in err if x.startswith("[gc] new area of 57360,")]
    back = [x for x in err if x.startswith("[gc] area of 57360 given back,")]
    assert len(new) == 1 and len(back) == 1, r.err
    assert new[0].endswith("IDF heap used 57364 of 98304"), r.err
    assert back[0].endswith("IDF heap used 0 of 98304"), r.err
    highs = [int(x.split()[2]) for x in err if x.startswith("[idf] high-water ")]
    assert highs and highs == sorted(highs) and highs[-1] == 57364, r.err
    assert r.out.split() == ["small", "big", "grown", "back"]  # the console itself is untouched


@pytest.mark.parametrize("port", ["micropython", "micropython-frozen", "micropython-1.26"])
def test_every_board_port_is_32_bit_with_the_memory_model(port: str) -> None:
    path = {"micropython": upy.MICROPYTHON, "micropython-frozen": MICROPYTHON_FROZEN}.get(
        port, MICROPYTHON_NEWEST
    )
    proc = subprocess.run(
        [str(path), "-c", "import sys, _board; print(sys.maxsize)"],
        capture_output=True,
        text=True,
        timeout=10,
        env={"MICROPYPATH": ".frozen"},
    )
    assert proc.stdout.split() == [str(2**31 - 1)], proc.stdout + proc.stderr


def test_an_unknown_profile_is_one_clear_error() -> None:
    with pytest.raises(JobsctlError, match=r"no board profile 'esp32-huge'.*esp32-plain"):
        boardmodel.profile("esp32-huge")


def test_device_run_takes_the_board_profile(stack_session, tmp_path) -> None:
    # `jobsctl device run --profile`: the board powers on with that memory, and says so.
    stack_session.create_thing("profile-cli")
    jobsctl = str(upy.ROOT / ".venv" / "bin" / "jobsctl")
    state = str(stack_session.state_dir)
    proc = subprocess.Popen(
        [jobsctl, "device", "run", "--state-dir", state, "profile-cli", "--profile", "esp32-tight"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # The runner's first line, written as it powers the board on.
        first = proc.stdout.readline()
        assert first == "[profile-cli] -- power on (boot 1, esp32-tight)\n", first
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    assert proc.returncode == 0


def test_bench_memory_reports_high_water_marks_and_headroom(capsys) -> None:
    # `python -m bench.memory`, the memory rows of `make bench`, on one job and profile (with
    # the example application installed, as `make bench` also runs it).
    assert bench_memory.main(["--profile", "esp32-psram", "--job", "config+sensor"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "| esp32-psram |" in line]
    cells = [c.strip() for c in rows[-1].strip("|").split("|")]
    assert cells[:3] == ["esp32-psram", "config+sensor", "SUCCEEDED"], rows
    assert cells[3].endswith("(first area 56.0 KB)") and cells[4].endswith("%"), rows
    assert cells[5].endswith("of 4184.0 KB") and cells[6].endswith("%"), rows


def _meet_the_goal_on_esp32_plain_never_grown(
    capsys: pytest.CaptureFixture[str], argv: list[str], jobs: list[str]
) -> None:
    # `python -m bench.memory ARGV` on esp32-plain: each of jobs SUCCEEDED, the GC heap never
    # grew past its 56 KB first area, and 15 % of both heaps was left.
    assert bench_memory.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "| esp32-plain |" in line]
    for job in jobs:
        cells = [c.strip() for c in rows[-len(jobs) :][jobs.index(job)].strip("|").split("|")]
        assert cells[:3] == ["esp32-plain", job, "SUCCEEDED"], rows
        assert cells[3].endswith("of 56.0 KB (first area 56.0 KB)"), rows  # never grown
        assert int(cells[4].removesuffix("%")) >= 15 and cells[7] == "yes", rows


def test_reboot_and_config_keep_the_goals_gc_headroom_on_esp32_plain_when_sampled_densely(
    capsys,
) -> None:
    # `python -m bench.memory --dense` (docs/memory.md section 5): a collection after every 256
    # bytes allocated, so the live high-water is sampled densely. Issue 14's goal for the two
    # jobs that do not grow the GC heap: at least 15 % of the 56 KB first area left, and the
    # heap never grown (the IDF heap keeps its 67 %).
    argv = ["--profile", "esp32-plain", "--dense", "--job", "reboot", "--job", "config"]
    _meet_the_goal_on_esp32_plain_never_grown(capsys, argv, ["reboot", "config"])


def test_every_job_keeps_the_goals_headroom_on_esp32_plain_with_the_library_frozen(
    capsys,
) -> None:
    # `python -m bench.memory --frozen --profile esp32-plain`, as README's Memory section gives
    # it (a part of `make bench`): on the custom firmware (`make firmware`: the library frozen
    # in) the agent's code stays in flash, so no job, not even an update, grows the GC heap,
    # and 15 % of both heaps is left.
    argv = ["--frozen", "--profile", "esp32-plain"]
    _meet_the_goal_on_esp32_plain_never_grown(capsys, argv, list(bench_memory.JOBS))


def test_bench_memory_modules_lists_every_device_module(capsys) -> None:
    # `python -m bench.memory --modules` (docs/memory.md): what each device module's import
    # adds to the stock-firmware board's heap, and the qstrs it leaves for good.
    from jobsctl.checkout import ROOT

    assert bench_memory.main(["--modules"]) == 0
    rows = {}
    out = capsys.readouterr().out.splitlines()
    for line in out:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[1].startswith("iotjobs."):
            rows[cells[1]] = cells
    assert {f"iotjobs.{p.stem}" for p in (ROOT / "lib" / "iotjobs").glob("*.py")} <= set(rows)
    assert int(rows["iotjobs.agent"][2].removesuffix(" B").replace(",", "")) > 1000, rows
    # the hardware modules are C on the board port, as on a board: their import takes nothing
    # (16 B: the probe's own first import); so does the Unix port's MQTT wait (_fdwait), which a
    # board does not have
    hw = {c[1].strip(): c[2].strip() for c in (r.strip("|").split("|") for r in out) if len(c) == 5}
    assert all(hw[m] in ("0 B", "16 B") for m in ("esp32", "machine", "network", "_fdwait")), hw
    qstrs = [int(r[3]) for r in rows.values()]
    assert qstrs == sorted(qstrs) and qstrs[-1] > qstrs[0], rows


ONE_SESSION = """
import sys, socket, tls
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(ca, "rb") as f:
    cadata = f.read()
ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = tls.CERT_REQUIRED
ctx.load_verify_locations(cadata)
s = socket.socket()
s.connect(socket.getaddrinfo(host, port)[0][-1])
try:
    ctx.wrap_socket(s, server_hostname=host)
    print("open")
except OSError as e:
    print("OSError", e.args[0])
except ValueError as e:
    print("ValueError", e.args[-1].strip())
"""


def test_a_handshake_short_of_memory_fails_the_ways_the_firmware_does(
    tmp_path, https_server, ca
) -> None:
    # One IDF region of N bytes, from too small for the record buffers to enough for a session:
    # modtls_mbedtls.c (unchanged) turns each allocation failure into what a board raises.
    script = tmp_path / "one.py"
    script.write_text(ONE_SESSION)
    args = ("localhost", str(https_server.server_port), str(ca.cert_path))
    seen: dict[str, int] = {}
    for size in range(22_000, 32_001, 500):
        env = {"SIM_IDF_HEAP": str(size), "MICROPYPATH": ".frozen"}
        out = upy.run(script=script, args=args, env=env, heapsize="56k").check().out.strip()
        seen.setdefault(out, size)
    expected = {
        "OSError 12",  # mbedtls_ssl_setup: MBEDTLS_ERR_SSL_ALLOC_FAILED -> ENOMEM
        "OSError -10368",  # the server's certificate: MBEDTLS_ERR_X509_ALLOC_FAILED
        "OSError 16",  # a bignum: MBEDTLS_ERR_MPI_ALLOC_FAILED (-0x10), made positive by modtls
        # The chain's signature check could not allocate: mbedTLS flags it as not trusted.
        "ValueError The certificate is not correctly signed by the trusted CA",
        "open",
    }
    assert set(seen) <= expected, seen
    assert "OSError 12" in seen and "open" in seen and len(seen) >= 3, seen
    # No failure first appears above the budget where the session opens.
    assert seen["open"] == max(seen.values()), seen


def test_bench_memory_modules_refuses_the_flags_it_would_ignore(capsys) -> None:
    # --modules measures imports on one profile's board; a --job or --dense beside it would
    # be dropped silently, so it is refused in one line.
    with pytest.raises(SystemExit) as e:
        bench_memory.main(["--modules", "--job", "reboot"])
    assert e.value.code == 2
    assert "--modules takes one --profile at most" in capsys.readouterr().err
