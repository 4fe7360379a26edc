"""Reliability: OTA under network faults, power loss and server restarts, with counted trials.

`make test` runs a quick slice (a trial or two per fault class); `make reliability` runs the
full counts (tests/plugin_reliability.py) and prints a table of trials and failures. Every trial
asserts the end state: the execution is terminal with a reason, the board boots a valid image,
and after a success the slot holds exactly the image.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from plugin_agent import OTA_HEAP, arn, details, final
from plugin_stack import unique, wait_until

from harness.faultproxy import Fault, FaultProxy
from jobsctl import image, otajob
from jobsctl.device import DeviceProcess
from jobsctl.stack import Stack

pytestmark = pytest.mark.reliability

SIZE = 400_000


def fuzz_settings(n: int, seed: int) -> Callable[[Any], Any]:
    # n examples from the run's seed (a new one each run, printed with the table, so that a
    # failure can be replayed with --reliability-seed; no example database), no deadline: a
    # trial drives a real service and board, whose timing says nothing about the input.
    config = settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )

    def apply(fn: Any) -> Any:
        return hypothesis_seed(seed)(config(fn))

    return apply


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return otajob.signing_key(tmp_path_factory.mktemp("signing"))


@pytest.fixture(scope="module")
def firmware() -> bytes:
    return image.build_app_image("2.0.0", size=SIZE)


def board(stack: Stack, boards: Callable[..., DeviceProcess], signing: Path) -> DeviceProcess:
    # timeout_ms 3 s: a stalled download is given up (and resumed) sooner than the default 10 s
    dev = boards(
        stack, unique("rel"), heapsize=OTA_HEAP, start=False, ota_key_file="k.pem", timeout_ms=3000
    )
    shutil.copy(image.public_key_path(signing), dev.board / "k.pem")
    dev.start()
    dev.wait_for("no pending job")
    return dev


def create(stack: Stack, thing: str, doc: dict[str, object], extra: dict[str, object]) -> str:
    job = unique("rel")
    stack.iot_client().create_job(
        jobId=job, targets=[arn(stack, thing)], document=json.dumps(doc), **extra
    )
    return job


def flash(dev: DeviceProcess) -> dict[str, Any]:
    return dict(json.loads((dev.board / "flash" / "otadata.json").read_text()))


def end_state_problem(dev: DeviceProcess, status: str, d: dict[str, str], data: bytes) -> str:
    """'' when the board is consistent after a trial, else what is wrong."""
    st = flash(dev)
    running = str(st["running"])
    version = image.read_app_version(image.slot_image(dev.board, running))
    if status == "SUCCEEDED":
        slot = image.slot_image(dev.board, running)[: len(data)]
        if hashlib.sha256(slot).digest() != hashlib.sha256(data).digest():
            return "slot content differs from the image"
        if version != "2.0.0" or st["state"].get(running) != "VALID":
            return f"succeeded but running {version} ({st})"
    elif status in ("FAILED", "REJECTED"):
        if not d.get("reason"):
            return f"{status} without a reason"
        if version not in ("1.0.0", "2.0.0"):
            return f"running {version}"
    else:
        return f"ended {status}"
    # The service records the final status before the device hears the reply; after a lost
    # reply the device re-sends it (TerminalStateReached) after reconnecting. Either way it
    # must end with no job state on the board.
    try:
        wait_until(lambda: not (dev.board / "jobstate.json").exists(), 60, "state cleared")
    except AssertionError:
        return "job state left behind"
    return ""


def conclude(
    stack: Stack, dev: DeviceProcess, job: str, data: bytes, must_succeed: bool, timeout: float
) -> str:
    """Wait for the execution to end; '' if it ended as it must and the board is consistent."""
    ex = final(stack, dev.board.name, job, timeout=timeout)
    why = end_state_problem(dev, ex["status"], details(ex), data)
    if must_succeed and ex["status"] != "SUCCEEDED":
        why = why or f"{ex['status']}: {details(ex).get('reason')}"
    dev.stop()
    return why


def test_network_faults_every_ota_resumes_and_the_image_matches(
    stack_session: Stack,
    boards: Callable[..., DeviceProcess],
    signing: Path,
    firmware: bytes,
    trials: Callable[[str, int], int],
    record: Callable[[str, bool, str], None],
    rng: random.Random,
) -> None:
    assert stack_session.objects is not None
    n = trials("network", 1)
    failures = []
    with FaultProxy("127.0.0.1", stack_session.objects.port) as proxy:
        for i in range(n):
            dev = board(stack_session, boards, signing)
            at = rng.randrange(20_000, SIZE - 20_000)
            fault = Fault.cut(at) if i % 2 == 0 else Fault.stall(at, seconds=30)
            proxy.plan(fault)
            doc, _ = otajob.prepare(stack_session, firmware, key=signing)
            url = stack_session.objects.presign(
                stack_session.objects.bucket, otajob.object_key(firmware), 3600
            )
            doc["url"] = url.replace(
                f"localhost:{stack_session.objects.port}", f"localhost:{proxy.port}"
            )
            job = create(stack_session, dev.board.name, doc, {})
            why = conclude(stack_session, dev, job, firmware, True, 90)
            record("network", not why, f"{fault.kind}@{at}: {why}" if why else "")
            failures += [why] if why else []
    assert not failures


def test_power_loss_at_random_moments_never_leaves_a_job_stuck(
    stack_session: Stack,
    boards: Callable[..., DeviceProcess],
    signing: Path,
    firmware: bytes,
    trials: Callable[[str, int], int],
    record: Callable[[str, bool, str], None],
    rng: random.Random,
) -> None:
    n = trials("power", 1)
    failures = []
    for _ in range(n):
        dev = board(stack_session, boards, signing)
        doc, extra = otajob.prepare(stack_session, firmware, key=signing)
        job = create(stack_session, dev.board.name, doc, extra)
        # The fault itself: cut the power at a random moment of the job (download, verify,
        # set_boot, state writes, reboot, self-test all fall in this window).
        delay = rng.uniform(0.0, 2.5)
        time.sleep(delay)
        dev.kill()
        dev.start()
        why = conclude(stack_session, dev, job, firmware, False, 90)
        record("power", not why, f"cut at {delay:.2f}s: {why}" if why else "")
        failures += [why] if why else []
    assert not failures


def test_broker_and_service_restarts_during_an_ota_lose_nothing(
    stack: Stack,
    boards: Callable[..., DeviceProcess],
    signing: Path,
    firmware: bytes,
    trials: Callable[[str, int], int],
    record: Callable[[str, bool, str], None],
    rng: random.Random,
) -> None:
    n = trials("server", 1)
    failures = []
    for i in range(n):
        dev = board(stack, boards, signing)
        doc, extra = otajob.prepare(stack, firmware, key=signing)
        job = create(stack, dev.board.name, doc, extra)
        time.sleep(rng.uniform(0.0, 1.5))  # the fault's moment, not synchronisation
        if i % 2 == 0:
            stack.restart_broker()
        else:
            stack.restart_service()
        why = conclude(stack, dev, job, firmware, True, 120)
        record("server", not why, why)
        failures += [why] if why else []
    assert not failures


# ---------------------------------------------------------------- fuzzing job documents

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
JSON_ANY = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=40,
)
# URLs that never reach a server that answers (a refused host would make each case a minute
# of retries): wrong types, garbage, unsupported schemes, plain http (refused by default).
BAD_URL = st.one_of(
    JSON_ANY,
    st.sampled_from(
        [
            "",
            "ftp://x/y",
            "https://",
            "https://user@h/x",
            "https://h:0/x",
            "http://localhost:1/fw.bin",
            "https://[::1]/x",
            "${aws:iot:nope}",
        ]
    ),
    st.text(max_size=60).map(lambda s: "https://" + s if "/" not in s else "http://x/" + s),
)
OTA_KEYS = {
    "url": BAD_URL,
    "size": st.one_of(JSON_ANY, st.integers(min_value=-5, max_value=2**40)),
    "sha256": st.one_of(JSON_ANY, st.text(alphabet="0123456789abcdefg", min_size=63, max_size=65)),
    "signature": st.one_of(JSON_ANY, st.text(max_size=100)),
    "version": JSON_ANY,
    "compression": st.one_of(JSON_ANY, st.just("gzip")),
    "window_bits": st.one_of(JSON_ANY, st.integers(min_value=0, max_value=40)),
}
# Documents up to and past AWS's 32768 characters, and nested past the service's 64 levels
# (the service refuses those up front: counted as refused, not as trials passed).
LARGE_DOC = st.tuples(st.sampled_from(["ota", "bundle", "nope"]), st.integers(0, 40_000)).map(
    lambda t: {"operation": t[0], "pad": "x" * t[1]}
)
NESTED_DOC = st.integers(1, 200).map(
    lambda d: {"operation": "ota", "url": json.loads("[" * d + "]" * d)}
)
DOCS = st.one_of(
    LARGE_DOC,
    NESTED_DOC,
    st.fixed_dictionaries(
        {"operation": st.sampled_from(["ota", "bundle"])},
        optional=OTA_KEYS,
    ),
    st.fixed_dictionaries({"operation": st.just("config"), "set": JSON_ANY}),
    st.fixed_dictionaries({"afr_ota": JSON_ANY}),
    st.dictionaries(st.text(max_size=12), JSON_ANY, max_size=5),
    st.fixed_dictionaries({"operation": JSON_ANY}),
)


def test_fuzzed_job_documents_never_crash_the_agent_and_each_ends_with_a_reason(
    stack_session: Stack,
    boards: Callable[..., DeviceProcess],
    signing: Path,
    trials: Callable[[str, int], int],
    record: Callable[[str, bool, str], None],
    seed: int,
    refused: Callable[[str], None],
) -> None:
    dev = board(stack_session, boards, signing)
    n = trials("fuzz", 25)
    seen: list[str] = []

    @fuzz_settings(n, seed)
    @given(doc=DOCS)
    def one(doc: dict[str, object]) -> None:
        text = json.dumps(doc)
        job = unique("fz")
        try:
            stack_session.iot_client().create_job(
                jobId=job, targets=[arn(stack_session, dev.board.name)], document=text
            )
        except stack_session.iot_client().exceptions.InvalidRequestException:
            refused("fuzz")  # the service refused it up front, as AWS does: not a trial passed
            return
        # A URL that never resolves ends FAILED only after the download's retry budget
        # (backoff 2+4+8+16+30+30 s, iotjobs.fetch.net_fail): wait past it.
        ex = final(stack_session, dev.board.name, job, timeout=150)
        reason = details(ex).get("reason", "")
        ok = ex["status"] in ("REJECTED", "FAILED", "SUCCEEDED") and (
            ex["status"] == "SUCCEEDED" or bool(reason)
        )
        why = "" if ok else f"{ex['status']} without a reason: {text[:80]}"
        record("fuzz", ok, why)
        seen.append(ex["status"])
        assert ok, why

    one()
    # The agent never crashed or reset while taking all of them.
    assert dev.boots == 1 and not any("Traceback" in line for line in dev.lines)
    assert "REJECTED" in seen


def test_broker_connection_cut_mid_ota_is_survived(
    stack_session: Stack,
    boards: Callable[..., DeviceProcess],
    signing: Path,
    firmware: bytes,
    trials: Callable[[str, int], int],
    record: Callable[[str, bool, str], None],
    rng: random.Random,
) -> None:
    # The proxy sits in front of the broker: the device's MQTT connection is cut at a random
    # byte while the job runs (progress reports, the final update, the describe after reboot).
    n = trials("mqtt", 1)
    failures = []
    with FaultProxy("127.0.0.1", stack_session.mqtt_port) as proxy:
        for _ in range(n):
            at = rng.randrange(300, 4_000)
            proxy.plan(Fault.none(), Fault.cut(at))  # the first connection is the idle one
            dev = boards(
                stack_session,
                unique("rel"),
                heapsize=OTA_HEAP,
                start=False,
                ota_key_file="k.pem",
                timeout_ms=3000,
                port=proxy.port,
            )
            shutil.copy(image.public_key_path(signing), dev.board / "k.pem")
            dev.start()
            dev.wait_for("no pending job")
            proxy.cut_all()  # the job starts on a fresh connection, the planned one
            doc, extra = otajob.prepare(stack_session, firmware, key=signing)
            job = create(stack_session, dev.board.name, doc, extra)
            why = conclude(stack_session, dev, job, firmware, True, 120)
            record("mqtt", not why, f"cut@{at}: {why}" if why else "")
            failures += [why] if why else []
    assert not failures
    # idle connection + the job's connection + at least one reconnect after a planned cut
    assert proxy.stats.connections >= 3 * n, proxy.stats


SEED_CODES = {
    "InvalidTopic",
    "InvalidJson",
    "InvalidRequest",
    "InvalidStateTransition",
    "ResourceNotFound",
    "VersionMismatch",
    "InternalError",
    "RequestThrottled",
    "TerminalStateReached",
}
PAYLOADS = st.one_of(
    st.binary(max_size=200),
    JSON_ANY.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(
            [
                "clientToken",
                "status",
                "statusDetails",
                "expectedVersion",
                "executionNumber",
                "includeJobDocument",
                "stepTimeoutInMinutes",
                "includeJobExecutionState",
                "jobId",
                "thingName",
            ]
        ),
        JSON_ANY,
        max_size=6,
    ).map(lambda d: json.dumps(d).encode()),
)
TOPICS = st.sampled_from(
    [
        "get",
        "start-next",
        "$next/get",
        "$next/update",
        "job-1/get",
        "job-1/update",
        "bogus/x",
        "job-1/update/accepted",
        "notify",
    ]
)


def test_malformed_data_plane_payloads_get_seed_error_codes_and_the_service_stays_up(
    stack_session: Stack,
    jobs_device: Callable[..., Any],
    trials: Callable[[str, int], int],
    record: Callable[[str, bool, str], None],
    seed: int,
) -> None:
    dev = jobs_device(stack_session)
    n = trials("dataplane", 40)

    @fuzz_settings(n, seed)
    @given(suffix=TOPICS, payload=PAYLOADS)
    def one(suffix: str, payload: bytes) -> None:
        since = dev.mark()
        dev.publish(suffix, payload)
        ok, why = True, ""
        if not (suffix.endswith("/accepted") or suffix == "notify"):
            # A request topic: an answer must come, and a rejection carries a seed code.
            # (Reply and notification topics are not requests; the service must just stay up.)
            base = dev.prefix + suffix
            topic = dev.wait_for_any({base + "/accepted", base + "/rejected"}, since=since)
            if topic.endswith("/rejected"):
                code = dev.wait_for(suffix + "/rejected", since=since).get("code")
                ok = code in SEED_CODES
                why = "" if ok else f"{suffix}: {code!r} for {payload[:60]!r}"
        record("dataplane", ok, why)
        assert ok, why

    one()
    # ...and it still answers a well-formed request.
    assert dev.request("get", {})[0] == "accepted"


# ---------------------------------------------------------------- fuzzing the control plane

# CreateJob's errors in the seed (../shared/seeds/), by HTTP status. Anything else (a 500, a
# hang, a body that is not JSON) is a failure.
CREATE_JOB_ERRORS = {
    400: "InvalidRequestException",
    404: "ResourceNotFoundException",
    409: "ResourceAlreadyExistsException",
    410: "LimitExceededException",
    429: "ThrottlingException",
    503: "ServiceUnavailableException",
}
LONG = st.integers(min_value=0, max_value=40_000).map(lambda n: "a" * n)
ARNS = st.sampled_from(
    [
        "arn:aws:iot:us-east-1:123456789012:thing/{thing}",  # the test's thing
        "arn:aws:iot:us-east-1:123456789012:thing/nobody",
        "arn:aws:iot:us-east-1:123456789012:thinggroup/none",
        "arn:aws:s3:::bucket",
        "",
    ]
)
CREATE_JOB_BODY = st.fixed_dictionaries(
    {},
    optional={
        "targets": st.one_of(JSON_ANY, st.lists(ARNS, max_size=3)),
        "document": st.one_of(JSON_ANY, LONG, JSON_ANY.map(json.dumps)),
        "documentSource": st.one_of(JSON_ANY, LONG, st.just("https://s3.amazonaws.com/b/k")),
        "description": st.one_of(JSON_ANY, LONG),
        "targetSelection": st.one_of(JSON_ANY, st.sampled_from(["SNAPSHOT", "CONTINUOUS", "x"])),
        "jobExecutionsRolloutConfig": st.one_of(
            JSON_ANY, st.fixed_dictionaries({"maximumPerMinute": JSON_ANY})
        ),
        "presignedUrlConfig": st.one_of(
            JSON_ANY,
            st.fixed_dictionaries({"roleArn": st.one_of(JSON_ANY, LONG), "expiresInSec": JSON_ANY}),
        ),
        "documentParameters": st.one_of(
            JSON_ANY, st.dictionaries(st.one_of(st.text(max_size=3), LONG), JSON_ANY, max_size=3)
        ),
    },
)
# Never empty: PUT /jobs/ is not CreateJob (no operation is addressed, 404 UnknownOperation).
JOB_IDS = st.one_of(
    st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True),
    st.text(min_size=1, max_size=70),
    LONG.filter(bool),
)


def test_malformed_control_plane_requests_get_the_seed_errors_and_the_service_stays_up(
    stack: Stack,
    trials: Callable[[str, int], int],
    record: Callable[[str, bool, str], None],
    seed: int,
) -> None:
    from urllib.parse import quote

    import urllib3
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    e = stack.endpoints
    thing = unique("cpz")
    stack.create_thing(thing)
    signer = SigV4Auth(
        Credentials(e["aws_access_key_id"], e["aws_secret_access_key"]), "iot", e["region"]
    )
    http = urllib3.PoolManager(ca_certs=e["ca_file"], retries=False, timeout=30)
    n = trials("controlplane", 40)
    statuses: set[int] = set()

    @fuzz_settings(n, seed)
    @given(job_id=JOB_IDS, body=st.one_of(CREATE_JOB_BODY, st.binary(max_size=200)))
    def one(job_id: str, body: dict[str, Any] | bytes) -> None:
        if isinstance(body, dict):
            if isinstance(body.get("targets"), list):
                body["targets"] = [
                    t.replace("{thing}", thing) if isinstance(t, str) else t
                    for t in body["targets"]
                ]
            data = json.dumps(body).encode()
        else:
            data = body
        # Dots encoded too, as botocore does: urllib3 would drop a "." or ".." path segment
        # after the request was signed.
        label = quote(job_id, safe="").replace(".", "%2E")
        url = f"{e['control_plane_url']}/jobs/{label}"
        request = AWSRequest(
            method="PUT", url=url, data=data, headers={"Content-Type": "application/json"}
        )
        signer.add_auth(request)
        r = http.request("PUT", url, body=data, headers=dict(request.headers.items()))
        statuses.add(r.status)
        why = ""
        if r.status != 200:
            name = r.headers.get("x-amzn-ErrorType", "")
            try:
                message = json.loads(r.data)["message"]
            except (ValueError, KeyError, TypeError):
                message = ""
            if CREATE_JOB_ERRORS.get(r.status) != name or not message:
                why = f"{r.status} {name!r} {r.data[:80]!r} for {data[:60]!r}"
        record("controlplane", not why, why)
        assert not why, why

    one()
    # Most of them are refused as invalid, and the service still takes a well-formed request.
    assert 400 in statuses
    job = unique("cpz")
    stack.iot_client().create_job(
        jobId=job, targets=[arn(stack, thing)], document=json.dumps({"operation": "reboot"})
    )
    assert stack.iot_client().describe_job(jobId=job)["job"]["status"] == "IN_PROGRESS"


class TestDeltaPowerLoss:
    """Power loss at random moments of a delta OTA job (lib/iotjobs/delta.py): half the trials
    cut the power while the patch is being applied (after the board logs ``step delta``), half
    at a random moment of the whole job. A patch is applied again from its start after a reset;
    the execution must end SUCCEEDED (slot = the new image) or FAILED/REJECTED with a reason,
    the board booting a valid image, no job state left. Trials alternate a version bump (a
    small patch, no checkpoint) and a larger image (mostly new bytes: a patch with checkpoints,
    so a cut while applying it resumes from one), with and without a full image to fall back
    to. Over HTTPS (``delta-power``) and over an MQTT stream (``delta-power-mqtt``: the patch
    file 1 of the job's stream, the full image file 0)."""

    @pytest.mark.parametrize("route", ["https", "mqtt"])
    def test_power_loss_during_a_delta_job_never_leaves_it_stuck(
        self,
        stack_session: Stack,
        boards: Callable[..., DeviceProcess],
        signing: Path,
        trials: Callable[[str, int], int],
        record: Callable[[str, bool, str], None],
        rng: random.Random,
        route: str,
    ) -> None:
        from jobsctl import delta

        base = image.build_app_image("1.0.0", size=64 * 1024)  # what a new simulated board runs
        name = "delta-power" if route == "https" else "delta-power-mqtt"
        n = trials(name, 2)
        failures = []
        for i in range(n):
            size = SIZE if i // 2 % 2 else 64 * 1024  # a 400 KB image: checkpoints
            new = image.build_app_image("2.0.0", size=size, seed="iotjobs-sim/1.0.0")
            dev = board(stack_session, boards, signing)
            doc, extra = otajob.prepare(stack_session, new, key=signing)
            patch = delta.create(base, new)
            key = delta.object_key(patch, new)
            url = stack_session.upload(key, patch.data)
            doc["delta"] = patch.document(otajob.placeholder(url))
            if i % 8 >= 4:
                del doc["url"]  # no full image to fall back to
            if route == "mqtt":
                doc, extra = self.over_mqtt(stack_session, doc, new, key), {}
            mark = dev.mark()
            job = create(stack_session, dev.board.name, doc, extra)
            if i % 2 == 0:
                dev.wait_for("step delta", since=mark, timeout=60)
                delay = rng.uniform(0.0, 0.3)
            else:
                delay = rng.uniform(0.0, 2.5)
            time.sleep(delay)  # the fault itself: when the power goes
            dev.kill()
            dev.start()
            why = conclude(stack_session, dev, job, new, False, 90)
            what = f"{len(patch.data)} B patch, cut {delay:.2f}s" + (
                " into step delta" if i % 2 == 0 else " after the job was created"
            )
            record(name, not why, f"{what}: {why}" if why else "")
            failures += [why] if why else []
        assert not failures

    @staticmethod
    def over_mqtt(stack: Stack, doc: dict[str, Any], new: bytes, key: str) -> dict[str, Any]:
        """``doc`` with its patch (and full image, if it offers one) in a stream instead."""
        sid = unique("rds")
        bucket = stack.endpoints["bucket"]
        full = "url" in doc
        files = otajob.stream_files(bucket, otajob.object_key(new)) if full else []
        files += otajob.stream_files(bucket, key, otajob.DELTA_FILE_ID)
        stack.iot_client().create_stream(
            streamId=sid, files=files, roleArn=otajob.stream_role(stack.endpoints["account_id"])
        )
        doc.pop("url", None)
        if full:
            doc.update(stream=sid, file_id=0)
        del doc["delta"]["url"]
        doc["delta"].update(stream=sid, file_id=otajob.DELTA_FILE_ID)
        return doc
