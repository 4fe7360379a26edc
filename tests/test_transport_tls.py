"""The device's MQTT transport against a real mosquitto with mutual TLS, under the Unix port.

Every refusal test would pass a connection through if certificate verification were off, so
each one fails when verification is broken.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as paho
import pytest

import upy
from jobsctl.broker import SERVICE_IDENTITY, Broker
from jobsctl.pki import Credentials

PROBE = Path(__file__).parent / "device" / "mqtt_probe.py"


def probe(
    mode: str,
    creds: Credentials | None,
    thing: str,
    broker: Broker,
    ca_file: Path,
    host: str = "localhost",
    timeout: float = 60,
    port: Path = upy.MICROPYTHON,
) -> upy.Result:
    folder = str(creds.cert.parent) if creds else "-"
    return upy.run(
        script=PROBE,
        args=(mode, folder, thing, str(broker.port), str(ca_file), host),
        timeout=timeout,
        port=port,
    )


def test_device_connects_with_mutual_tls_and_round_trips_a_message(broker, ca, thing_creds):
    r = probe("roundtrip", thing_creds("dev-1"), "dev-1", broker, ca.cert_path).check()
    assert "CONNECTED" in r.out
    assert "RECEIVED $aws/things/dev-1/jobs/probe hello" in r.out


def test_the_mqtt_read_path_allocates_nothing_idle_and_imports_nothing(broker, ca, thing_creds):
    # tests/device/mqtt_probe.py "hot": 500 polls with nothing to read run under heap_lock
    # (a MemoryError fails the probe), and neither they nor a message read run an import.
    r = probe("hot", thing_creds("dev-hot"), "dev-hot", broker, ca.cert_path).check()
    assert "IDLE-POLLS-LOCKED 500 imports 0" in r.out, r.out
    assert "MESSAGE-READ 300 imports 0" in r.out, r.out


@pytest.mark.parametrize("mode", ["wait", "wait-poller"])
@pytest.mark.parametrize("port", ["board_port", "frozen_port", "newest_port"])
def test_the_wait_lasts_its_time_ends_on_a_message_wake_or_ping_and_never_polls_tls(
    broker, ca, thing_creds, request, port, mode
):
    # tests/device/mqtt_probe.py "wait": Transport.wait(), what the agent awaits between two
    # reads (issue 18: woken by the socket, not a 20 ms tick), as the Unix port runs it (parked
    # in asyncio's poller on the TCP socket under TLS: _fdwait, C in the board port) and
    # through asyncio's poller on _Wake as a board does ("wait-poller"), on the stock-firmware
    # port, the custom firmware's (library frozen) and the newest MicroPython's (each its
    # asyncio).
    thing = f"dev-{mode}-{port.split('_')[0]}"
    r = probe(
        mode, thing_creds(thing), thing, broker, ca.cert_path, port=request.getfixturevalue(port)
    ).check()
    idle = re.search(r"IDLE-WAIT-MS (\d+) got 0", r.out)
    assert idle and int(idle.group(1)) >= 200, r.out
    if mode == "wait":
        # Another task's yields are not held while the agent waits: through the Unix port's
        # poller with _Wake in it each takes 1 ms, at most 200 in those 200 ms
        # (transport._TICKED).
        spins = re.search(r"SPINNER-YIELDS (\d+)", r.out)
        assert spins and int(spins.group(1)) > 400, r.out
    alloc = re.search(r"ALLOC-10MS (\d+) ALLOC-300MS (\d+)", r.out)
    assert alloc and int(alloc.group(1)) == int(alloc.group(2)), r.out
    assert "MESSAGE-WOKE True got 1" in r.out, r.out
    assert "WAKE-WOKE True" in r.out, r.out
    assert "GUARD-POLLS 0" in r.out, r.out
    assert "KEEPALIVE-WOKE True ping sent True" in r.out, r.out
    assert "CANCEL-CLEAN True" in r.out, r.out
    assert "CLOSE-WOKE True poller 0 timer None" in r.out, r.out
    assert f"PARKED-CLASS {'Parked' if mode == 'wait' else '_Wake'}" in r.out, r.out
    if mode == "wait":
        # The task parks in asyncio's poller on the socket's file descriptor (the only entry
        # there: poll() sleeps in the kernel, no 1 ms pass); a message wakes it through that
        # descriptor, with no sleep_ms and no short poll in between (the 1 ms cadence of
        # the old run-queue wait would show as both); a wait that ends at its deadline
        # allocates nothing.
        assert "PARKED-ON-FD True" in r.out, r.out
        assert "MESSAGE-BY-FD True short-polls 0 sleeps 0" in r.out, r.out
        assert int(alloc.group(1)) == 0, r.out
        # That wait is C (firmware/board/_board/fdwait.c), as a board's poller: its import
        # takes no GC heap, and the device library has no Python copy of it.
        assert "FDWAIT-IMPORT-ALLOC 0 in-lib False" in r.out, r.out


def test_a_unix_port_without_fdwait_waits_through_asyncios_poller(broker, ca, thing_creds):
    # transport.connect on a Unix port built without the board port's C wait (_fdwait): the
    # connect works and the wait is a board's (_Wake in asyncio's poller), every behaviour kept.
    thing = "dev-nofdwait"
    r = probe("wait-nofdwait", thing_creds(thing), thing, broker, ca.cert_path).check()
    assert "PARKED-CLASS _Wake" in r.out, r.out
    for line in ("MESSAGE-WOKE True got 1", "WAKE-WOKE True", "GUARD-POLLS 0", "CANCEL-CLEAN True"):
        assert line in r.out, r.out


def test_device_refuses_a_broker_signed_by_another_ca(broker, other_ca, thing_creds):
    r = probe("roundtrip", thing_creds("dev-2"), "dev-2", broker, other_ca.cert_path).check()
    assert "CONNECT-FAILED" in r.out
    assert "CONNECTED" not in r.out.replace("CONNECT-FAILED", "")


def test_device_refuses_a_broker_certificate_naming_another_host(broker, ca, thing_creds):
    r = probe(
        "roundtrip", thing_creds("dev-3"), "dev-3", broker, ca.cert_path, host="broker.example.com"
    ).check()
    assert "CONNECT-FAILED" in r.out


def test_broker_refuses_a_device_without_a_client_certificate(broker, ca):
    r = probe("roundtrip", None, "dev-4", broker, ca.cert_path).check()
    assert "CONNECT-FAILED" in r.out


def test_broker_refuses_a_client_certificate_from_another_ca(broker, ca, other_ca, tmp_path):
    stranger = other_ca.issue("dev-5", tmp_path / "dev-5")
    r = probe("roundtrip", stranger, "dev-5", broker, ca.cert_path).check()
    assert "CONNECT-FAILED" in r.out


def test_broker_refuses_a_paho_client_without_a_certificate(broker, ca):
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="anon")
    client.tls_set(ca_certs=str(ca.cert_path))
    with pytest.raises(OSError):
        client.connect(broker.host, broker.port)
        # The refusal can surface on the first read after the handshake.
        for _ in range(20):
            rc = client.loop(timeout=0.5)
            if rc != paho.MQTT_ERR_SUCCESS:
                raise OSError(f"connection refused: {rc}")
    client.socket() and client.disconnect()


def _popen_probe(args: list[str]) -> subprocess.Popen[str]:
    env = dict(os.environ, MICROPYPATH=os.pathsep.join(upy.DEVICE_PATH))
    return subprocess.Popen(
        [str(upy.MICROPYTHON), str(PROBE), *args],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
    )


def test_thing_never_receives_another_things_messages(broker, ca, thing_creds, tmp_path):
    creds = thing_creds("dev-6")
    proc = _popen_probe(
        [
            "foreign-subscribe",
            str(creds.cert.parent),
            "dev-6",
            str(broker.port),
            str(ca.cert_path),
            "localhost",
        ]
    )
    assert proc.stdout is not None
    service = ca.issue(SERVICE_IDENTITY, tmp_path / "service")
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="svc")
    client.tls_set(ca_certs=str(ca.cert_path), certfile=str(service.cert), keyfile=str(service.key))
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == "READY":
                break
        client.connect("localhost", broker.port)
        client.loop_start()
        client.publish(
            "$aws/things/someone-else/jobs/notify-next", b"secret", qos=1
        ).wait_for_publish(5)
        client.publish("$aws/things/dev-6/jobs/notify-next", b"mine", qos=1).wait_for_publish(5)
        out, _ = proc.communicate(timeout=30)
        lines += out.splitlines()
    finally:
        client.loop_stop()
        proc.kill()
    assert "RECEIVED $aws/things/dev-6/jobs/notify-next mine" in lines
    assert not any("secret" in line for line in lines)


def test_keepalive_pings_hold_an_idle_link_open(broker, ca, thing_creds):
    r = probe("keepalive", thing_creds("dev-7"), "dev-7", broker, ca.cert_path).check()
    assert "ALIVE" in r.out


def test_a_stalled_broker_is_detected_instead_of_blocking_forever(broker, ca, thing_creds):
    creds = thing_creds("dev-8")
    proc = _popen_probe(
        ["stall", str(creds.cert.parent), "dev-8", str(broker.port), str(ca.cert_path), "localhost"]
    )
    assert proc.stdout is not None and proc.stdin is not None and broker.proc is not None
    try:
        assert proc.stdout.readline().strip() == "CONNECTED"
        broker.proc.send_signal(signal.SIGSTOP)  # the broker freezes: TCP stays open, no bytes
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line.startswith("DEAD-LINK-DETECTED"), line
        waited_ms = int(line.split()[-1])
        assert waited_ms < 15000  # keepalive 2 s + reply timeout 3 s, with slack
    finally:
        broker.proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()


ONE_TRY = """
import asyncio
from iotjobs.transport import Link


class T:
    hold = None

    def connect(self):
        raise OSError(113)

    def close(self):
        pass


link = Link(T, None, log=print)
print("GOT", asyncio.run(link.ensure(once=True)), link.attempts)
"""


def test_a_single_connect_try_logs_its_failure_and_no_retry_it_will_not_wait(micropython):
    # Link.ensure(once=True), the try before the application's first turn (iotjobs.app): the
    # caller tries next, so the log names no backoff.
    out = micropython(ONE_TRY).check().out
    assert "link: connect failed (OSError(113,))\n" in out, out
    assert "retry in" not in out, out
    assert "GOT None 1" in out, out
