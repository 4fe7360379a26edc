"""Reliability against hostile input (issue 21), against a `jobsctl serve` of its own.

The stack runs as its own process here so that its peak memory (VmHWM) is the service's alone
and goes into the reliability table. Four classes, each with hypothesis inputs from the run's
seed: documents up to and past 32 KB and nested past the parsers' limits, through the service
to a board with the device code frozen in at the e2e heap (`hostile-docs`); data-plane payloads
up to and past the broker's packet limit (`hostile-dataplane`); control-plane bodies large,
chunked and malformed, signed and unsigned (`hostile-controlplane`); client-id collisions and
reserved names (`identity`). Each class ends with a normal job on every thing it touched,
which must end SUCCEEDED in its usual time.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from plugin_agent import FROZEN_HEAP, details
from plugin_stack import JobsDevice, unique, wait_until
from test_reliability import CREATE_JOB_BODY, CREATE_JOB_ERRORS, SEED_CODES, fuzz_settings

from jobsctl.broker import MAX_PACKET_SIZE, SERVICE_IDENTITY
from jobsctl.device import DeviceProcess, setup_board
from jobsctl.errors import JobsctlError
from jobsctl.service.common import TERMINAL
from jobsctl.service.controlplane import MAX_BODY
from jobsctl.stack import iot_client
from jobsctl.things import create_thing

pytestmark = pytest.mark.reliability

JOBSCTL = Path(sys.executable).parent / "jobsctl"
# What an unsigned or wrongly signed request may get: 403 and one of AWS's names for it.
DENIED = {"UnrecognizedClientException", "InvalidSignatureException"}


class Served:
    """A `jobsctl serve` subprocess on a state dir of its own."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.proc = subprocess.Popen(
            [str(JOBSCTL), "serve", "--state-dir", str(state_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        seen = []
        for line in self.proc.stdout:
            seen.append(line)
            if "serving" in line:
                break
        else:
            raise AssertionError("serve did not start: " + "".join(seen[-5:]))
        # Keep reading its output, so that it never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.endpoints: dict[str, Any] = json.loads((state_dir / "endpoints.json").read_text())
        self.iot = iot_client(self.endpoints)

    def thing(self, name: str) -> dict[str, Any]:
        return create_thing(self.state_dir, name, None)

    def device(self, name: str) -> JobsDevice:
        info = self.thing(name)
        return JobsDevice(
            name, self.endpoints["mqtt_port"], info["cert_file"], info["key_file"], info["ca_file"]
        )

    def arn(self, thing: str) -> str:
        e = self.endpoints
        return f"arn:aws:iot:{e['region']}:{e['account_id']}:thing/{thing}"

    def create_job(self, thing: str, document: str) -> str:
        job = unique("hj")
        self.iot.create_job(jobId=job, targets=[self.arn(thing)], document=document)
        return job

    def final(self, thing: str, job: str, timeout: float) -> dict[str, Any]:
        def done() -> Any:
            ex = self.iot.describe_job_execution(jobId=job, thingName=thing)["execution"]
            return ex if ex["status"] in TERMINAL else None

        return dict(wait_until(done, timeout, f"{job} to end"))

    def note_memory(self, peak_memory: Callable[[str, int], int]) -> None:
        peak_memory("the service (jobsctl serve)", self.proc.pid)
        broker = int((self.state_dir / "broker" / "mosquitto.pid").read_text())
        peak_memory("mosquitto", broker)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("hostile") / "state")
    try:
        yield s
    finally:
        s.stop()


def normal_job_by_hand(served: Served, dev: JobsDevice) -> str:
    """A normal job taken and finished over the data plane by a JobsDevice: '' or what failed."""
    job = served.create_job(dev.name, json.dumps({"operation": "noop"}))
    kind, body = dev.request("start-next", {})
    ex = body.get("execution") or {}
    if kind != "accepted" or ex.get("jobId") != job:
        return f"start-next: {kind} {str(body)[:120]}"
    kind, body = dev.request(
        f"{job}/update", {"status": "SUCCEEDED", "expectedVersion": ex["versionNumber"]}
    )
    if kind != "accepted":
        return f"update: {str(body)[:120]}"
    status = served.final(dev.name, job, 10)["status"]
    return "" if status == "SUCCEEDED" else f"normal job ended {status}"


# ---------------------------------------------------------------- documents to a board


def _nest(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


HOSTILE_DOCS = st.one_of(
    # large: up to and past AWS's 32768 characters
    st.tuples(st.sampled_from(["ota", "bundle", "nope"]), st.integers(0, 40_000)).map(
        lambda t: json.dumps({"operation": t[0], "pad": "x" * t[1]})
    ),
    # many small members
    st.integers(0, 4_000).map(
        lambda n: json.dumps({"operation": "nope", **{f"k{i}": i for i in range(n)}})
    ),
    # nested past the service's 64 levels and past CPython's recursion limit
    st.tuples(st.integers(1, 3_000), st.sampled_from(["list", "dict"])).map(
        lambda t: '{"operation": "ota", "url": ' + _nest(*t) + "}"
    ),
    # characters JSON escapes, a document long in bytes but not in characters
    st.integers(0, 20_000).map(lambda n: json.dumps({"operation": "nope", "u": "\U0001f600" * n})),
)


def test_hostile_documents_never_reset_the_board_and_each_ends_with_a_reason(
    served: Served,
    frozen_port: Path,
    trials: Callable[[str, int], int],
    record: Callable[[str, bool, str], None],
    refused: Callable[[str], None],
    peak_memory: Callable[[str, int], int],
    seed: int,
) -> None:
    name = unique("hdoc")
    served.thing(name)
    board = setup_board(served.state_dir, name)
    dev = DeviceProcess(board, heapsize=FROZEN_HEAP, frozen=True)
    dev.start()
    try:
        dev.wait_for("no pending job")
        n = trials("hostile-docs", 3)
        failures: list[str] = []

        @fuzz_settings(n, seed)
        @given(doc=HOSTILE_DOCS)
        def one(doc: str) -> None:
            try:
                job = served.create_job(name, doc)
            except served.iot.exceptions.InvalidRequestException:
                refused("hostile-docs")  # too long or too deep for CreateJob, as it must be
                return
            ex = served.final(name, job, 60)
            reason = details(ex).get("reason", "")
            ok = ex["status"] in ("REJECTED", "FAILED") and bool(reason)
            why = "" if ok else f"{ex['status']} {reason!r} for {len(doc)} chars: {doc[:60]}"
            record("hostile-docs", ok, why)
            failures.extend([why] if why else [])

        one()
        served.note_memory(peak_memory)
        assert not failures, failures[:3]
        # The board never reset, never crashed, and still does a normal job.
        assert dev.boots == 1 and not any("Traceback" in line for line in dev.lines)
        job = served.create_job(
            name, json.dumps({"operation": "config", "set": {"keepalive_s": 50}})
        )
        assert served.final(name, job, 30)["status"] == "SUCCEEDED"
    finally:
        dev.stop()


# ---------------------------------------------------------------- data-plane payloads


def _payload(kind: str, n: int) -> bytes:
    if kind == "token":
        return json.dumps({"clientToken": "t" * n}).encode()
    if kind == "details":
        entries = {f"k{i}": "v" * 1024 for i in range(n // 1000)}
        return json.dumps({"status": "IN_PROGRESS", "statusDetails": entries}).encode()
    if kind == "nested":
        return b"[" * (n // 2) + b"]" * (n // 2)
    return b"\xff" * n


HOSTILE_PAYLOADS = st.tuples(
    st.sampled_from(["get", "start-next", "$next/get", "job-1/get", "job-1/update", "bogus/x"]),
    st.sampled_from(["token", "details", "nested", "binary"]),
    st.one_of(st.integers(0, 200), st.integers(0, MAX_PACKET_SIZE + 20_000)),
)


class _Throwaway:
    """A thing's one-off connection: for a publish the broker must refuse (and disconnect)."""

    def __init__(self, served: Served, info: dict[str, Any]) -> None:
        self.done = threading.Event()
        self.up = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=info["thing_name"])
        self.c.tls_set(
            ca_certs=info["ca_file"], certfile=info["cert_file"], keyfile=info["key_file"]
        )
        self.c.on_connect = lambda *a: self.up.set()
        self.c.on_disconnect = lambda *a: self.done.set()
        self.c.connect("localhost", served.endpoints["mqtt_port"])
        self.c.loop_start()
        assert self.up.wait(10), "no CONNACK"

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_hostile_data_plane_payloads_up_to_and_past_the_packet_limit_poison_nothing(
    served: Served,
    trials: Callable[[str, int], int],
    record: Callable[[str, bool, str], None],
    peak_memory: Callable[[str, int], int],
    seed: int,
) -> None:
    dev = served.device(unique("hdp"))
    spare = served.thing(unique("hdp-big"))
    n = trials("hostile-dataplane", 10)
    try:

        @fuzz_settings(n, seed)
        @given(case=HOSTILE_PAYLOADS)
        def one(case: tuple[str, str, int]) -> None:
            suffix, kind, size = case
            payload = _payload(kind, size)
            why = ""
            if len(payload) + len(dev.prefix + suffix) + 10 > MAX_PACKET_SIZE:
                # Past the broker's limit: it disconnects the sender, and no one else notices.
                t = _Throwaway(served, spare)
                try:
                    t.c.publish(f"$aws/things/{spare['thing_name']}/jobs/{suffix}", payload, qos=0)
                    if not t.done.wait(10):
                        why = f"the broker took a {len(payload)}-byte publish"
                finally:
                    t.close()
            else:
                since = dev.mark()
                dev.publish(suffix, payload)
                base = dev.prefix + suffix
                topic = dev.wait_for_any({base + "/accepted", base + "/rejected"}, since=since)
                reply = dev.wait_for(topic[len(dev.prefix) :], since=since)
                if not isinstance(reply, dict):
                    why = f"{suffix}: unparsable reply {reply!r:.60}"
                elif topic.endswith("/rejected") and reply.get("code") not in SEED_CODES:
                    why = f"{suffix}: {reply.get('code')!r} for {kind}/{size}"
                elif len(str(reply.get("clientToken", ""))) > 64:
                    why = f"{suffix}: a {len(reply['clientToken'])}-character token echoed"
            # ...and the service still answers at once.
            if not why and dev.request("get", {})[0] != "accepted":
                why = "the service stopped answering"
            record("hostile-dataplane", not why, why)
            assert not why, why

        one()
        served.note_memory(peak_memory)
        assert normal_job_by_hand(served, dev) == ""
    finally:
        dev.close()


# ---------------------------------------------------------------- control-plane bodies


BODIES = st.one_of(
    CREATE_JOB_BODY.map(lambda b: json.dumps(b).encode()),
    st.integers(0, MAX_BODY + 50_000).map(
        lambda n: json.dumps({"document": "x" * n, "targets": []}).encode()
    ),
    st.integers(1, 100_000).map(lambda d: b'{"document": ' + b"[" * d + b"]" * d + b"}"),
    st.binary(max_size=300),
    st.integers(0, MAX_BODY + 50_000).map(lambda n: b"\x00" * n),
)
MODES = st.sampled_from(["signed", "unsigned", "bad-signature", "chunked", "chunked-unsigned"])


def test_hostile_control_plane_bodies_get_aws_errors_never_a_500_or_a_hang(
    served: Served,
    trials: Callable[[str, int], int],
    record: Callable[[str, bool, str], None],
    peak_memory: Callable[[str, int], int],
    seed: int,
) -> None:
    import urllib3
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    e = served.endpoints
    thing = unique("hcp")
    served.thing(thing)
    http = urllib3.PoolManager(ca_certs=e["ca_file"], retries=False, timeout=30)
    n = trials("hostile-controlplane", 10)

    @fuzz_settings(n, seed)
    @given(body=BODIES, mode=MODES)
    def one(body: bytes, mode: str) -> None:
        url = f"{e['control_plane_url']}/jobs/{unique('hcp')}"
        request = AWSRequest(
            method="PUT", url=url, data=body, headers={"Content-Type": "application/json"}
        )
        secret = e["aws_secret_access_key"] + ("x" if mode == "bad-signature" else "")
        if mode not in ("unsigned", "chunked-unsigned"):
            SigV4Auth(Credentials(e["aws_access_key_id"], secret), "iot", e["region"]).add_auth(
                request
            )
        headers = dict(request.headers.items())
        if mode.startswith("chunked"):
            r = http.request("PUT", url, body=iter([body]), headers=headers, chunked=True)
        else:
            r = http.request("PUT", url, body=body, headers=headers)
        name = r.headers.get("x-amzn-ErrorType", "")
        try:
            message = json.loads(r.data)["message"]
        except (ValueError, KeyError, TypeError):
            message = ""
        if mode in ("unsigned", "chunked-unsigned", "bad-signature"):
            ok = r.status == 403 and name in DENIED and bool(message)
            # The signature needs the body, which is not read past the cap: a request with our
            # key id but a wrong signature learns only that its body is too large.
            if mode == "bad-signature" and len(body) > MAX_BODY:
                ok = r.status == 400 and name == "InvalidRequestException"
        else:
            ok = r.status == 200 or (CREATE_JOB_ERRORS.get(r.status) == name and bool(message))
        why = "" if ok else f"{mode}: {r.status} {name!r} {r.data[:80]!r} for {body[:40]!r}"
        record("hostile-controlplane", ok, why)
        assert ok, why

    one()
    served.note_memory(peak_memory)
    # The service still takes a well-formed job, and the thing still does it.
    dev = served.device(unique("hcp"))
    try:
        assert normal_job_by_hand(served, dev) == ""
    finally:
        dev.close()


# ---------------------------------------------------------------- identities


CLIENT_IDS = st.one_of(
    st.sampled_from(["{victim}", SERVICE_IDENTITY, "jobs-service", ""]),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30),
)


def test_client_id_collisions_and_reserved_names_take_over_nobody(
    served: Served,
    trials: Callable[[str, int], int],
    record: Callable[[str, bool, str], None],
    peak_memory: Callable[[str, int], int],
    seed: int,
) -> None:
    for reserved in ("jobs-service", "JOBS-SERVICE", SERVICE_IDENTITY):
        with pytest.raises(JobsctlError):
            served.thing(reserved)
        record("identity", True, "")
    with pytest.raises(served.iot.exceptions.InvalidRequestException):
        served.iot.create_thing(thingName="jobs-service")
    victim = served.device(unique("victim"))
    drops: list[object] = []
    victim.client.on_disconnect = lambda *a: drops.append(a)
    impostor = served.thing(unique("impostor"))
    n = trials("identity", 3)
    try:

        @fuzz_settings(n, seed)
        @given(client_id=CLIENT_IDS)
        def one(client_id: str) -> None:
            cid = client_id.replace("{victim}", victim.name)
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid)
            c.tls_set(
                ca_certs=impostor["ca_file"],
                certfile=impostor["cert_file"],
                keyfile=impostor["key_file"],
            )
            up = threading.Event()
            c.on_connect = lambda *a: up.set()
            c.connect("localhost", served.endpoints["mqtt_port"])
            c.loop_start()
            try:
                why = "" if up.wait(10) else f"no CONNACK for {cid!r}"
                if not why and victim.request("get", {})[0] != "accepted":
                    why = f"{cid!r}: the victim got no reply"
                if not why and drops:
                    why = f"{cid!r} threw the victim off"
            finally:
                c.disconnect()
                c.loop_stop()
            record("identity", not why, why)
            assert not why, why

        one()
        served.note_memory(peak_memory)
        assert normal_job_by_hand(served, victim) == ""
    finally:
        victim.close()
