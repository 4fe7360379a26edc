"""A simulated board on a pty that speaks MicroPython's raw REPL, for mpremote.

The Unix port has no raw REPL, so mpremote cannot drive it. This bridge opens a pty pair,
answers on the master side the way a board's UART does (friendly REPL, raw REPL, soft reset)
and executes what it receives in one persistent ``build/micropython`` process whose filesystem
root is the board's folder (``os.VfsPosix(folder)`` mounted at ``/``, ``sys.path`` =
``['', '.frozen', '/lib']`` as on the ESP32 port). ``mpremote connect /dev/pts/N fs cp ...``
then works unchanged, and what lands in the folder is what a board would hold.

    with RawReplBridge(board_dir) as bridge:
        subprocess.run(["mpremote", "connect", bridge.port, "fs", "ls", ":"])

Or from a shell: ``cd tests && python -m harness.rawrepl DIR`` prints the port and serves
until Ctrl-C.

Protocol on the pty (as MicroPython 1.25's pyexec.c): Ctrl-A enters raw mode
(``raw REPL; CTRL-B to exit\\r\\n>``); in raw mode text is collected until Ctrl-D, answered with
``OK``, executed, then ``<stdout>\\x04<traceback>\\x04>``; Ctrl-D on an empty buffer is a soft
reset (``OK\\r\\nMPY: soft reboot\\r\\n``, a fresh interpreter); Ctrl-B back to the friendly REPL;
Ctrl-C clears the buffer, or interrupts running code (KeyboardInterrupt); raw-paste requests
(Ctrl-E ``A`` Ctrl-A) are declined with ``R\\x00``, so mpremote falls back to plain raw mode.
Output is "cooked" like a board's (``\\n`` -> ``\\r\\n``). A helper process that exits (e.g.
``machine.reset()``) is a board reset: a new process starts and the friendly banner is shown.

Between the bridge and the helper: requests on the helper's stdin (``seq:u32 mode:u8
len:u32 source``), the program's own output on its stdout/stderr (relayed as is), and on a
separate pipe ``S seq`` when execution starts and ``D seq len traceback`` when it ends. Every
byte the program wrote precedes its ``D`` frame, so draining stdout/stderr before answering
keeps the order a UART would have.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

from jobsctl.checkout import MICROPYTHON
from jobsctl.errors import JobsctlError

_RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
_FRIENDLY_BANNER = (
    b"MicroPython v1.25.0 on 2025-04-19; simulated ESP32 (Unix port, raw-REPL bridge)\r\n"
    b'Type "help()" for more information.\r\n'
)
_PROMPT = b">>> "
# How long a write to the pty may wait for a reader before the bytes are dropped, as a UART
# drops bytes nobody reads.
_WRITE_TIMEOUT_S = 5.0

# The MicroPython side: a real file, compiled by `make check` (devcheck) and linted by ruff.
_BOARD_PROGRAM = Path(__file__).resolve().parents[1] / "device" / "rawrepl_board.py"


def _cooked(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class RawReplBridge:
    """A simulated board on a pty: ``port`` is the device path for mpremote."""

    def __init__(
        self,
        board_dir: Path,
        *,
        micropython: Path = MICROPYTHON,
        heapsize: str | None = None,
        frozen_path: list[Path] | None = None,
    ) -> None:
        self.board_dir = Path(board_dir).resolve()
        self.micropython = Path(micropython)
        self.heapsize = heapsize
        # Extra folders a real firmware would have frozen in (e.g. build/upylib for umqtt):
        # mounted read-only at /.frozen-N and appended to sys.path.
        self.frozen_path = list(frozen_path or [])
        self.port = ""
        self.resets = 0
        self.transcript = bytearray()  # everything the board wrote to the pty
        self._master = -1
        self._slave = -1
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctl_r = -1
        self._raw = False
        self._line = bytearray()
        self._esc = 0  # progress through Ctrl-E 'A' Ctrl-A (raw-paste request)
        self._seq = 0
        self._running = False  # a request was sent and its D frame not seen yet
        self._started = False  # its S frame was seen
        self._interrupt = False  # Ctrl-C came in before S
        self._interrupted = False  # SIGINT sent for this run
        self._ctl_buf = b""
        self.error: BaseException | None = None

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> str:
        if not self.micropython.exists():
            raise JobsctlError(f"{self.micropython} is missing: run `make setup`")
        if not self.board_dir.is_dir():
            raise JobsctlError(f"board folder {self.board_dir} does not exist")
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        # Keep the slave open so the master never sees EIO between mpremote sessions.
        self.port = os.ttyname(self._slave)
        os.set_blocking(self._master, False)
        self._stop_r, self._stop_w = os.pipe()
        self._spawn()
        self._write(_FRIENDLY_BANNER + _PROMPT)
        self._thread = threading.Thread(target=self._loop, name="rawrepl-bridge", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(timeout=10)
            self._thread = None
        self._kill()
        for fd in (self._master, self._slave, self._stop_r, self._stop_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = self._stop_r = self._stop_w = -1

    def __enter__(self) -> RawReplBridge:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the helper process ---------------------------------------------------------------------

    def _spawn(self) -> None:
        ctl_r, ctl_w = os.pipe()
        cmd = [str(self.micropython)]
        if self.heapsize:
            cmd += ["-X", f"heapsize={self.heapsize}"]
        cmd += [str(_BOARD_PROGRAM), str(ctl_w), *map(str, self.frozen_path)]
        env = dict(os.environ, MICROPYPATH=".frozen")
        try:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.board_dir,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(ctl_w,),
            )
        finally:
            os.close(ctl_w)
        self._ctl_r = ctl_r
        self._ctl_buf = b""
        assert self._proc.stdout is not None and self._proc.stderr is not None
        for stream in (self._proc.stdout, self._proc.stderr):
            os.set_blocking(stream.fileno(), False)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self._ctl_r >= 0:
            os.close(self._ctl_r)
            self._ctl_r = -1
        self._running = self._started = self._interrupt = self._interrupted = False

    def _reset(self, banner: bytes) -> None:
        self._kill()
        self._spawn()
        self.resets += 1
        self._write(banner)

    # --- the pty side ---------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self.transcript += data
        view = memoryview(data)
        deadline = time.monotonic() + _WRITE_TIMEOUT_S
        while view:
            try:
                n = os.write(self._master, view)
                view = view[n:]
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    return  # nobody reads the port: the bytes are lost, as on a UART
                select.select([], [self._master], [], left)

    def _loop(self) -> None:
        try:
            while True:
                proc = self._proc
                assert proc is not None and proc.stdout is not None and proc.stderr is not None
                out_fds = [proc.stdout.fileno(), proc.stderr.fileno()]
                ready, _, _ = select.select(
                    [self._stop_r, self._master, self._ctl_r, *out_fds], [], []
                )
                if self._stop_r in ready:
                    return
                for fd in out_fds:
                    if fd in ready:
                        self._relay_once(fd)
                if self._ctl_r in ready:
                    self._control()
                if self._master in ready:
                    try:
                        data = os.read(self._master, 4096)
                    except BlockingIOError:
                        data = b""
                    for byte in data:
                        self._key(byte)
        except BaseException as exc:  # surfaced by the tests through .error
            self.error = exc

    def _drain_and_relay(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        for stream in (proc.stdout, proc.stderr):
            while self._relay_once(stream.fileno()):
                pass

    def _relay_once(self, fd: int) -> bool:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if data:
            self._write(_cooked(data))
        return bool(data)

    def _control(self) -> None:
        try:
            chunk = os.read(self._ctl_r, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._board_died()
            return
        self._ctl_buf += chunk
        while self._ctl_buf:
            kind = self._ctl_buf[:1]
            if kind == b"S":
                if len(self._ctl_buf) < 5:
                    return
                seq = struct.unpack("<I", self._ctl_buf[1:5])[0]
                self._ctl_buf = self._ctl_buf[5:]
                if self._running and seq == self._seq:
                    self._started = True
                    if self._interrupt:
                        self._sigint()
            elif kind == b"D":
                if len(self._ctl_buf) < 9:
                    return
                seq, n = struct.unpack("<II", self._ctl_buf[1:9])
                if len(self._ctl_buf) < 9 + n:
                    return
                err = self._ctl_buf[9 : 9 + n]
                self._ctl_buf = self._ctl_buf[9 + n :]
                if self._running and seq == self._seq:
                    self._finished(err)
            else:
                raise RuntimeError(f"bad control frame from the helper: {self._ctl_buf[:16]!r}")

    def _finished(self, err: bytes) -> None:
        self._drain_and_relay()
        self._running = self._started = self._interrupt = self._interrupted = False
        if self._raw:
            self._write(b"\x04" + _cooked(err) + b"\x04>")
        else:
            self._write(_cooked(err) + _PROMPT)

    def _board_died(self) -> None:
        self._drain_and_relay()
        proc = self._proc
        rc = proc.wait() if proc is not None else -1
        self._raw = False
        self._line.clear()
        self._reset(
            f"\r\nMPY: board reset (exit code {rc})\r\n".encode() + _FRIENDLY_BANNER + _PROMPT
        )

    def _sigint(self) -> None:
        if not self._interrupted and self._proc is not None:
            self._interrupted = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGINT)

    def _execute(self, source: bytes, mode: bytes) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self._running = True
        frame = struct.pack("<I", self._seq) + mode + struct.pack("<I", len(source)) + source
        try:
            proc.stdin.write(frame)
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # the helper is gone; its control pipe's EOF resets the board

    def _key(self, c: int) -> None:
        if self._running:
            if c == 0x03:
                if self._started:
                    self._sigint()
                else:
                    self._interrupt = True
            return  # typed while a program runs: nobody reads stdin
        if self._raw:
            self._raw_key(c)
        else:
            self._friendly_key(c)

    def _raw_key(self, c: int) -> None:
        if self._esc:
            expected = (0, ord("A"), 0x01)[self._esc]
            if c == expected:
                self._esc += 1
                if self._esc == 3:
                    self._esc = 0
                    self._write(b"R\x00")  # raw-paste: understood, not supported
                return
            self._line += b"\x05A"[: self._esc]
            self._esc = 0
        if c == 0x01:
            self._line.clear()
            self._write(b"\r\n" + _RAW_BANNER + b">")
        elif c == 0x02:
            self._raw = False
            self._line.clear()
            self._write(b"\r\n" + _FRIENDLY_BANNER + _PROMPT)
        elif c == 0x03:
            self._line.clear()
        elif c == 0x04:
            if not self._line:
                self._write(b"OK\r\nMPY: soft reboot\r\n")
                self._reset(_RAW_BANNER + b">")
                return
            source, self._line = bytes(self._line), bytearray()
            self._write(b"OK")
            self._execute(source, b"e")
        elif c == 0x05 and not self._line:
            self._esc = 1
        else:
            self._line.append(c)

    def _friendly_key(self, c: int) -> None:
        if c == 0x01:
            self._raw = True
            self._line.clear()
            self._write(b"\r\n" + _RAW_BANNER + b">")
        elif c == 0x02:
            self._line.clear()
            self._write(b"\r\n" + _FRIENDLY_BANNER + _PROMPT)
        elif c == 0x03:
            self._line.clear()
            self._write(b"\r\n" + _PROMPT)
        elif c == 0x04:
            if not self._line:
                self._write(b"\r\nMPY: soft reboot\r\n")
                self._reset(_FRIENDLY_BANNER + _PROMPT)
        elif c in (0x08, 0x7F):
            if self._line:
                self._line.pop()
                self._write(b"\b \b")
        elif c in (0x0D, 0x0A):
            self._write(b"\r\n")
            source, self._line = bytes(self._line), bytearray()
            if source.strip():
                self._execute(source, b"s")
            else:
                self._write(_PROMPT)
        elif c >= 0x20 or c == 0x09:
            self._line.append(c)
            self._write(bytes([c]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.rawrepl",
        description="Serve a folder as a simulated MicroPython board on a pty (raw REPL).",
    )
    parser.add_argument("board_dir", type=Path)
    parser.add_argument("--heapsize", default=None)
    args = parser.parse_args(argv)
    try:
        bridge = RawReplBridge(args.board_dir, heapsize=args.heapsize)
        port = bridge.start()
    except JobsctlError as exc:
        print(f"rawrepl: {exc}", file=sys.stderr)
        return 1
    print(port, flush=True)
    try:
        thread = bridge._thread
        while thread is not None and thread.is_alive():
            thread.join(timeout=1.0)  # wakes for Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        bridge.stop()
    return 0 if bridge.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
