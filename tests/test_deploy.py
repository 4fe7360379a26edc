"""`jobsctl deploy` against a simulated board on a pty: mpremote does the copying through the
raw-REPL bridge, the files land, their hashes match, and the deployed code runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from plugin_board import PtyConsole

import upy
from harness.rawrepl import RawReplBridge
from jobsctl.checkout import ROOT
from jobsctl.deploy import BoardInfo, check_board, deploy, parse_sha256sum
from jobsctl.errors import JobsctlError
from jobsctl.pki import Credentials

MPREMOTE = str(Path(sys.executable).parent / "mpremote")


def mpremote(port: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MPREMOTE, "connect", port, *args], capture_output=True, text=True, timeout=60
    )


def jobsctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobsctl.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def bundle(tmp_path: Path, thing_creds: Callable[[str], Credentials]) -> Path:
    creds = thing_creds("board-1")
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "device.pem").write_bytes(creds.cert.read_bytes())
    (out / "device.key").write_bytes(creds.key.read_bytes())
    (out / "AmazonRootCA1.pem").write_bytes(creds.cert.read_bytes())
    config = {
        "thing_name": "board-1",
        "endpoint": "localhost",
        "port": 8883,
        "ca_file": "AmazonRootCA1.pem",
        "cert_file": "device.pem",
        "key_file": "device.key",
    }
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A small stand-in for the repository: a package with a subpackage, boot.py, main.py."""
    root = tmp_path / "project"
    (root / "lib" / "iotjobs" / "handlers").mkdir(parents=True)
    (root / "lib" / "iotjobs" / "__init__.py").write_text("VERSION = '9.9'\n")
    (root / "lib" / "iotjobs" / "greet.py").write_text(
        "def greet(name):\n    return 'hello ' + name\n"
    )
    (root / "lib" / "iotjobs" / "handlers" / "__init__.py").write_text("NAMES = ('x',)\n")
    (root / "boot.py").write_text("print('boot: ok')\n")
    (root / "main.py").write_text(
        "import json, iotjobs, iotjobs.greet, iotjobs.handlers\n"
        "cfg = json.load(open('config.json'))\n"
        "print(iotjobs.greet.greet(cfg['thing_name']), iotjobs.VERSION, iotjobs.__file__)\n"
    )
    return root


# --- the bridge speaks the raw REPL ----------------------------------------------------------


def test_bridge_runs_mpremote_exec_with_output_errors_and_state_within_a_session(
    sim_board: RawReplBridge,
) -> None:
    r = mpremote(sim_board.port, "exec", "x = 20", "+", "eval", "x * 2 + 2")
    assert r.returncode == 0 and r.stdout.strip() == "42", r
    r = mpremote(sim_board.port, "exec", "open('/missing')")
    assert r.returncode == 1 and "OSError" in r.stdout and "ENOENT" in r.stdout
    # a new mpremote session soft-resets the board: a fresh interpreter
    r = mpremote(sim_board.port, "eval", "x")
    assert r.returncode == 1 and "NameError" in r.stdout
    assert sim_board.resets >= 3


def test_bridge_board_root_is_the_board_folder_and_path_is_an_esp32s(
    sim_board: RawReplBridge,
) -> None:
    (sim_board.board_dir / "marker.txt").write_text("here")
    r = mpremote(sim_board.port, "exec", "import os, sys; print(os.listdir('/'), sys.path[:3])")
    assert r.returncode == 0, r
    assert "'marker.txt'" in r.stdout and "['', '.frozen', '/lib']" in r.stdout
    r = mpremote(sim_board.port, "fs", "cp", ":marker.txt", str(sim_board.board_dir / "copy"))
    assert r.returncode == 0 and (sim_board.board_dir / "copy").read_text() == "here"


def test_bridge_protocol_ok_outputs_soft_reset_and_declined_raw_paste(
    console: PtyConsole,
) -> None:
    console.write(b"\r\x01")
    console.expect(b"raw REPL; CTRL-B to exit\r\n>")
    console.write(b"\x05A\x01")
    assert console.expect(b"R\x00") == b"R\x00"
    console.write(b"print('out')\nraise ValueError('bad')\x04")
    reply = console.expect(b"\x04>")
    out, err, rest = reply.split(b"\x04")
    assert out == b"OKout\r\n" and b"ValueError: bad" in err and rest == b">"
    console.write(b"\x04")  # empty buffer: soft reset
    assert console.expect(b"raw REPL; CTRL-B to exit\r\n>").startswith(
        b"OK\r\nMPY: soft reboot\r\n"
    )
    console.write(b"\x02")
    console.expect(b">>> ")
    console.write(b"6 * 7\r")
    assert b"42\r\n" in console.expect(b">>> ")


def test_bridge_ctrl_c_interrupts_running_code_with_keyboardinterrupt(
    console: PtyConsole,
) -> None:
    console.write(b"\r\x01")
    console.expect(b"raw REPL; CTRL-B to exit\r\n>")
    console.write(b"print('looping')\nwhile True:\n    pass\n\x04")
    console.expect(b"looping\r\n")
    console.write(b"\x03")
    err = console.expect(b"\x04>")
    assert b"KeyboardInterrupt" in err
    console.write(b"print('alive')\x04")  # same interpreter, still usable
    assert console.expect(b"\x04>").startswith(b"OKalive\r\n\x04")


# --- deploy ----------------------------------------------------------------------------------


def test_deploy_compiles_copies_and_verifies_library_boot_main_and_bundle(
    sim_board: RawReplBridge, project: Path, bundle: Path, micropython: Callable[..., upy.Result]
) -> None:
    result = deploy(sim_board.port, bundle, root=project, reset=False)
    board = sim_board.board_dir
    libs = sorted(p.relative_to(board).as_posix() for p in (board / "lib").rglob("*"))
    assert libs == [
        "lib/iotjobs",
        "lib/iotjobs/__init__.mpy",
        "lib/iotjobs/greet.mpy",
        "lib/iotjobs/handlers",
        "lib/iotjobs/handlers/__init__.mpy",
    ]
    for name in ("boot.py", "main.py"):
        assert (board / name).read_bytes() == (project / name).read_bytes()
    for name in ("config.json", "device.pem", "device.key", "AmazonRootCA1.pem"):
        assert (board / name).read_bytes() == (bundle / name).read_bytes()
    # every file on the board matches the hash deploy verified through mpremote
    assert result["verified"] == len(result["files"]) == 9
    for board_path, digest in result["files"].items():
        assert sha256(board / board_path) == digest
    assert (board / "lib/iotjobs/greet.mpy").read_bytes()[:2] == b"M\x06"
    # the board runs the compiled library, not sources
    run = micropython(script="main.py", cwd=board, env={"MICROPYPATH": ".frozen:lib"})
    assert run.check().out.strip() == "hello board-1 9.9 lib/iotjobs/__init__.mpy"


def test_deploy_removes_stale_library_files_and_keeps_the_boards_own_files(
    sim_board: RawReplBridge, project: Path
) -> None:
    board = sim_board.board_dir
    (board / "lib" / "iotjobs" / "old").mkdir(parents=True)
    (board / "lib" / "iotjobs" / "greet.py").write_text("raise ImportError('stale source')\n")
    (board / "lib" / "iotjobs" / "old" / "gone.mpy").write_bytes(b"M\x06")
    (board / "lib" / "other.py").write_text("# someone else's library\n")
    (board / "job-state.json").write_text('{"job": "keep me"}')
    (board / "config.json").write_text('{"thing_name": "already-there"}')

    result = deploy(sim_board.port, None, root=project, reset=False)
    assert sorted(result["removed"]) == [
        "/lib/iotjobs/greet.py",
        "/lib/iotjobs/old/",
        "/lib/iotjobs/old/gone.mpy",
    ]
    assert not (board / "lib" / "iotjobs" / "greet.py").exists()
    assert not (board / "lib" / "iotjobs" / "old").exists()
    assert (board / "lib" / "other.py").exists()
    assert (board / "job-state.json").read_text() == '{"job": "keep me"}'
    assert json.loads((board / "config.json").read_text()) == {"thing_name": "already-there"}


def test_deploy_refuses_a_broken_bundle_before_touching_the_board(
    sim_board: RawReplBridge, project: Path, bundle: Path
) -> None:
    (bundle / "device.key").unlink()
    with pytest.raises(JobsctlError, match=r"key_file names device\.key, which is not in"):
        deploy(sim_board.port, bundle, root=project)
    assert b"raw REPL" not in sim_board.transcript
    (bundle / "device.key").write_text("-----BEGIN CERTIFICATE-----\n")  # a cert, not a key
    with pytest.raises(JobsctlError, match="does not look like a PEM key"):
        deploy(sim_board.port, bundle, root=project)
    assert list(sim_board.board_dir.iterdir()) == []


def test_deploy_refuses_firmware_with_another_mpy_version() -> None:
    check_board(BoardInfo(mpy=6 | 3 << 8 | 10 << 10, platform="esp32"))  # 1.25 on an ESP32
    assert BoardInfo(mpy=6 | 3 << 8 | 10 << 10, platform="esp32").arch == "xtensawin"
    assert BoardInfo(mpy=6 | 3 << 8 | 11 << 10, platform="esp32").arch == "rv32imc"
    with pytest.raises(JobsctlError, match=r"loads \.mpy version 5"):
        check_board(BoardInfo(mpy=5 | 9 << 10, platform="esp32"))


def test_parse_sha256sum_reads_mpremote_output_with_progress_lines() -> None:
    out = (
        "cp /tmp/x/boot.py :/boot.py\nUp to date: /main.py\nsha256sum :/boot.py\n"
        + "ab" * 32
        + "\nsha256sum :/lib/iotjobs/a.mpy\n"
        + "cd" * 32
        + "\n"
    )
    assert parse_sha256sum(out) == {"boot.py": "ab" * 32, "lib/iotjobs/a.mpy": "cd" * 32}


def test_cli_deploy_to_a_missing_port_fails_in_one_line(tmp_path: Path) -> None:
    r = jobsctl("deploy", "--port", str(tmp_path / "ttyUSB9"))
    assert r.returncode == 1
    assert r.stderr.startswith(f"jobsctl: {tmp_path / 'ttyUSB9'} does not exist")
    assert r.stderr.count("\n") == 1


def test_make_deploy_passes_port_and_bundle_to_jobsctl() -> None:
    r = subprocess.run(
        ["make", "-n", "deploy", "PORT=/dev/ttyUSB0", "BUNDLE=bundle"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert 'jobsctl deploy --port "/dev/ttyUSB0" --bundle "bundle"' in r.stdout


@pytest.mark.skipif(
    not (ROOT / "boot.py").exists() or not (ROOT / "sim" / "boardrun.py").exists(),
    reason="needs the agent's boot.py, main.py and sim/boardrun.py",
)
def test_jobsctl_deploy_of_the_repository_lands_verified_and_the_agent_starts(
    sim_board: RawReplBridge, bundle: Path
) -> None:
    r = jobsctl("deploy", "--port", sim_board.port, "--bundle", str(bundle))
    assert r.returncode == 0, r.stderr
    assert "all SHA-256 match" in r.stdout
    board = sim_board.board_dir
    modules = sorted(p.relative_to(ROOT / "lib") for p in (ROOT / "lib" / "iotjobs").rglob("*.py"))
    for rel in modules:
        assert (board / "lib" / rel.with_suffix(".mpy")).exists(), rel
    assert not list((board / "lib").rglob("*.py"))
    # power on the deployed board: its own lib/ (the .mpy files), the simulated hardware
    env = dict(
        os.environ,
        MICROPYPATH=os.pathsep.join(
            [".frozen", "lib", str(ROOT / "sim"), str(ROOT / "build/upylib")]
        ),
    )
    proc = subprocess.Popen(
        [str(upy.MICROPYTHON), str(ROOT / "sim" / "boardrun.py")],
        cwd=board,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip(), "the deployed board printed nothing"
    finally:
        proc.kill()
        proc.wait()


def test_deploy_no_lib_for_frozen_firmware_copies_only_entry_points_and_clears_lib(
    sim_board: RawReplBridge, project: Path
) -> None:
    board = sim_board.board_dir
    (board / "lib" / "iotjobs").mkdir(parents=True)
    (board / "lib" / "iotjobs" / "greet.mpy").write_bytes(b"M\x06 shadowed by frozen code")
    result = deploy(sim_board.port, None, root=project, reset=False, lib=False)
    assert sorted(result["files"]) == ["boot.py", "main.py"]
    assert result["removed"] == ["/lib/iotjobs/greet.mpy"]
    assert (board / "main.py").read_bytes() == (project / "main.py").read_bytes()
