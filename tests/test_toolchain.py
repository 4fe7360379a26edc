"""The toolchain the project builds for itself: the Unix port, umqtt.simple, the stubs."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

import upy
from jobsctl import device

UMQTT_SHA256 = "8555d2f654deb8eb0d724f79b0811a78cc94029d070f3d96bbd74288653d63a5"


def test_unix_port_is_micropython_1_25_0_with_native_tls(micropython):
    r = micropython(
        "import sys, tls, deflate, hashlib\n"
        "print(sys.implementation.version[:3], tls.PROTOCOL_TLS_CLIENT, hasattr(hashlib, 'sha256'))"
    ).check()
    assert r.out.split()[:3] == ["(1,", "25,", "0)"]
    assert r.out.strip().endswith("True")


def test_the_boards_ssl_module_is_the_sim_shim_frozen_in():
    # Debian strips micropython-lib: the board port's `ssl` is sim/ssl.py (over sim/ussl.py),
    # frozen in as official firmware freezes micropython-lib's, never one of Debian's build.
    proc = subprocess.run(
        [str(upy.MICROPYTHON), "-c", "import sys, ssl; print(ssl.__file__, 'ussl' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=10,
        env={"MICROPYPATH": ".frozen"},
    )
    assert proc.stdout.split() == ["ssl.py", "True"], proc.stdout + proc.stderr


def test_umqtt_simple_is_the_pinned_unmodified_release():
    module = upy.ROOT / "build" / "upylib" / "umqtt" / "simple.py"
    assert hashlib.sha256(module.read_bytes()).hexdigest() == UMQTT_SHA256


def test_make_considers_the_toolchain_up_to_date():
    # `make -q` exits 0 only when nothing would be rebuilt: a second `make test` must not
    # build MicroPython, fetch umqtt or recreate the venv again.
    targets = [
        "build/micropython",
        "build/micropython-frozen",
        "build/micropython-1.26",
        "build/upylib/umqtt/simple.py",
        ".venv/bin/jobsctl",
    ]
    proc = subprocess.run(["make", "-q", *targets], cwd=upy.ROOT, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tls_context_costs_a_few_kb_of_heap_as_on_esp32(micropython):
    # The port links an mbedTLS without HAVEGE (as ESP-IDF's): with bookworm's libmbedtls each
    # SSLContext carried a 38 KB entropy state on the MicroPython heap, and every heap figure of
    # the project measured that instead of the device code.
    r = micropython(
        "import gc, tls\n"
        "gc.collect(); a = gc.mem_alloc()\n"
        "c = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)\n"
        "gc.collect(); print(gc.mem_alloc() - a)"
    ).check()
    assert int(r.out.split()[-1]) < 6 * 1024


def test_a_removed_module_does_not_stay_importable_from_its_old_mpy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The simulated boards import lib/ from build/mpy: a module deleted or renamed in lib/ must
    # go from there too, or a test would pass against code that `make deploy` no longer sends.
    src, out = tmp_path / "src", tmp_path / "mpy"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "kept.py").write_text("X = 1\n")
    (src / "pkg" / "gone.py").write_text("Y = 2\n")
    monkeypatch.setattr(device, "SOURCES", {"lib": src})
    monkeypatch.setattr(device, "MPY_DIR", out)
    device.compile_device_code()
    assert sorted(p.name for p in (out / "lib" / "pkg").iterdir()) == ["gone.mpy", "kept.mpy"]
    (src / "pkg" / "gone.py").unlink()
    device.compile_device_code()
    assert sorted(p.name for p in (out / "lib" / "pkg").iterdir()) == ["kept.mpy"]
