# The board side of the raw-REPL bridge (tests/harness/rawrepl.py), run by the Unix port in the
# board's folder: micropython rawrepl_board.py CTL_FD [FOLDER...]. CTL_FD is the inherited
# descriptor of the control pipe, opened through /proc before the board folder becomes the
# root; each FOLDER is mounted read-only at /.frozen-N and appended to sys.path (what a real
# firmware would have frozen in, e.g. build/upylib for umqtt).
import io
import os
import sys

_ctl = open("/proc/self/fd/" + sys.argv[1], "wb")
_inp = sys.stdin.buffer
_root = os.getcwd()
os.umount("/")
os.mount(os.VfsPosix(_root), "/")
os.chdir("/")
sys.path[:] = ["", ".frozen", "/lib"]
del _root
for _i, _p in enumerate(sys.argv[2:]):
    os.mount(os.VfsPosix(_p), "/.frozen-%d" % _i)
    sys.path.append("/.frozen-%d" % _i)


def _readn(n):
    buf = bytearray(n)
    mv = memoryview(buf)
    got = 0
    while got < n:
        k = _inp.readinto(mv[got:])
        if not k:
            sys.exit(0)
        got += k
    return buf


def _serve():
    g = {"__name__": "__main__"}
    while True:
        try:
            hdr = _readn(9)
        except KeyboardInterrupt:
            # a late Ctrl-C for the previous run; nothing of the next request was read yet
            continue
        seq = bytes(hdr[0:4])
        src = bytes(_readn(int.from_bytes(hdr[5:9], "little"))).decode()
        err = None
        try:
            _ctl.write(b"S" + seq)
            exec(compile(src, "<stdin>", "single" if hdr[4] == 115 else "exec"), g)
        except BaseException as e:
            err = e
        src = None
        # at most one SIGINT per run; if it lands here, write the end frame again (the bridge
        # ignores a repeated one)
        while True:
            try:
                text = b""
                if err is not None:
                    s = io.StringIO()
                    sys.print_exception(err, s)
                    text = s.getvalue().encode()
                _ctl.write(b"D" + seq + len(text).to_bytes(4, "little") + text)
                break
            except KeyboardInterrupt:
                pass


_serve()
