"""The device agent end to end: the real device code under the Unix port, the real local Jobs
service on a real mosquitto with mutual TLS, jobs created with boto3.

Each test waits on what the board prints or what the service records, never on time.
The boards run the device code as `make deploy` puts it on a stock firmware (.mpy files) on
the simulated board's memory (plugin_agent.BOARD_PROFILE); the config job also runs once on the
custom-firmware board (the library frozen in).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from plugin_agent import create_job, details, execution, final
from plugin_stack import unique, wait_until

from jobsctl.device import DeviceProcess
from jobsctl.stack import Stack

Boards = Callable[..., DeviceProcess]


@pytest.mark.parametrize("frozen", [False, True], ids=["mpy", "frozen"])
def test_config_job_created_with_boto3_ends_succeeded_and_changes_the_config(
    stack_session: Stack, boards: Boards, frozen: bool
) -> None:
    thing = unique("agent")
    dev = boards(stack_session, thing, frozen=frozen)
    dev.wait_for("no pending job")
    job = create_job(stack_session, thing, {"operation": "config", "set": {"keepalive_s": 45}})
    ex = final(stack_session, thing, job)
    assert ex["status"] == "SUCCEEDED"
    assert details(ex) == {"reason": "applied", "changed": "keepalive_s"}
    assert json.loads((dev.board / "config.json").read_text())["keepalive_s"] == 45
    assert dev.boots == 1


def test_malformed_documents_end_rejected_with_a_reason_and_the_agent_goes_on(
    stack_session: Stack, boards: Boards
) -> None:
    thing = unique("agent")
    dev = boards(stack_session, thing)
    dev.wait_for("no pending job")
    cases = {
        # (A document that is not a JSON object never gets this far: CreateJob refuses it,
        # like AWS; tests/device/protocol_checks.py pins the agent's handling of one.)
        json.dumps({"steps": []}): "job document has no operation",
        json.dumps({"operation": "paint"}): "unsupported operation 'paint'",
        json.dumps({"operation": "config", "set": {"thing_name": "x"}}): "thing_name",
        json.dumps({"operation": "config", "set": {"keepalive_s": "fast"}}): "keepalive_s",
    }
    for doc, reason in cases.items():
        job = create_job(stack_session, thing, doc)
        ex = final(stack_session, thing, job)
        assert ex["status"] == "REJECTED", doc
        assert reason in details(ex)["reason"], (doc, details(ex))
    good = create_job(stack_session, thing, {"operation": "config", "set": {"log_level": "info"}})
    assert final(stack_session, thing, good)["status"] == "SUCCEEDED"
    assert dev.boots == 1 and dev.running


def test_job_canceled_while_its_handler_runs_stops_the_handler(
    stack_session: Stack, boards: Boards
) -> None:
    thing = unique("agent")
    dev = boards(stack_session, thing, app=True)
    dev.wait_for("no pending job")
    job = create_job(stack_session, thing, {"operation": "wait", "until": "never"})
    dev.wait_for(f"{job}: waiting for never")
    stack_session.iot_client().cancel_job(jobId=job, force=True, comment="operator changed mind")
    dev.wait_for(f"{job}: canceled, handler stopped")
    assert execution(stack_session, thing, job)["status"] == "CANCELED"
    # ...and the agent takes the next job.
    nxt = create_job(stack_session, thing, {"operation": "config", "set": {"log_level": "info"}})
    assert final(stack_session, thing, nxt)["status"] == "SUCCEEDED"


def test_queued_jobs_run_one_after_another(stack_session: Stack, boards: Boards) -> None:
    thing = unique("agent")
    dev = boards(stack_session, thing, app=True, start=False)
    jobs = [
        create_job(stack_session, thing, {"operation": "wait", "until": f"go{i}"}) for i in range(3)
    ]
    dev.start()
    for i, job in enumerate(jobs):
        dev.wait_for(f"{job}: waiting for go{i}")
        # While job i runs, the later ones are still QUEUED: never two at once.
        for later in jobs[i + 1 :]:
            assert execution(stack_session, thing, later)["status"] == "QUEUED"
        (dev.board / f"go{i}").touch()
        assert final(stack_session, thing, job)["status"] == "SUCCEEDED"
    order = [ln for ln in dev.lines if ": wait" in ln and "waiting for" not in ln]
    assert [ln.split(":")[0].split()[-1] for ln in order] == jobs


def test_injected_version_mismatch_and_throttling_are_recovered_from(
    stack_session: Stack, boards: Boards
) -> None:
    thing = unique("agent")
    stack_session.create_thing(thing)
    stack_session.inject_fault(thing, "start-next", "RequestThrottled", times=2)
    stack_session.inject_fault(thing, "update", "VersionMismatch", times=1)
    stack_session.inject_fault(thing, "update", "InternalError", times=1)
    job = create_job(stack_session, thing, {"operation": "config", "set": {"log_level": "info"}})
    dev = boards(stack_session, thing)
    ex = final(stack_session, thing, job)
    assert ex["status"] == "SUCCEEDED"
    text = "\n".join(dev.lines)
    assert text.count("RequestThrottled") >= 2
    assert "VersionMismatch: version" in text
    assert "InternalError" in text


def test_terminal_state_reached_drops_the_job_and_the_agent_goes_on(
    stack_session: Stack, boards: Boards
) -> None:
    thing = unique("agent")
    dev = boards(stack_session, thing, app=True)
    dev.wait_for("no pending job")
    job = create_job(stack_session, thing, {"operation": "wait", "until": "go"})
    dev.wait_for(f"{job}: waiting for go")
    stack_session.inject_fault(thing, "update", "TerminalStateReached", times=1)
    (dev.board / "go").touch()
    dev.wait_for("update refused: TerminalStateReached")
    nxt = create_job(stack_session, thing, {"operation": "config", "set": {"log_level": "info"}})
    assert final(stack_session, thing, nxt)["status"] == "SUCCEEDED"
    assert dev.running and dev.boots == 1


def test_broker_and_service_restarted_mid_job_are_survived(stack: Stack, boards: Boards) -> None:
    thing = unique("agent")
    dev = boards(stack, thing, app=True)
    dev.wait_for("no pending job")
    job = create_job(stack, thing, {"operation": "wait", "until": "go"})
    dev.wait_for(f"{job}: waiting for go")
    mark = dev.mark()
    stack.restart_broker()
    dev.wait_for("connected, subscribed", since=mark)
    mark = dev.mark()
    stack.restart_service()
    (dev.board / "go").touch()
    ex = final(stack, thing, job)
    assert ex["status"] == "SUCCEEDED"
    assert details(ex) == {"reason": "done", "runs": "1"}
    assert dev.boots == 1


def test_reset_during_a_job_resumes_it_from_the_persisted_state(
    stack_session: Stack, boards: Boards
) -> None:
    thing = unique("agent")
    dev = boards(stack_session, thing, app=True)
    dev.wait_for("no pending job")
    job = create_job(stack_session, thing, {"operation": "wait", "until": "go"})
    dev.wait_for(f"{job}: waiting for go (run 1)")
    dev.kill()  # power cut in the middle of the handler
    assert json.loads((dev.board / "jobstate.json").read_text())["job"] == job
    dev.start()
    dev.wait_for(f"{job}: resuming after a restart")
    dev.wait_for(f"{job}: waiting for go (run 2)")
    (dev.board / "go").touch()
    ex = final(stack_session, thing, job)
    assert ex["status"] == "SUCCEEDED"
    assert details(ex)["runs"] == "2"
    wait_until(lambda: not (dev.board / "jobstate.json").exists(), what="state cleared")


def test_reset_during_a_non_resumable_job_fails_it_with_a_reason(
    stack_session: Stack, boards: Boards
) -> None:
    thing = unique("agent")
    dev = boards(stack_session, thing, app=True)
    dev.wait_for("no pending job")
    job = create_job(stack_session, thing, {"operation": "wait-once", "until": "go"})
    dev.wait_for(f"{job}: waiting for go")
    dev.kill()
    dev.start()
    ex = final(stack_session, thing, job)
    assert ex["status"] == "FAILED"
    assert "interrupted by a reset" in details(ex)["reason"]


def test_reboot_job_reports_succeeded_after_the_board_is_back(
    stack_session: Stack, boards: Boards
) -> None:
    thing = unique("agent")
    dev = boards(stack_session, thing)
    dev.wait_for("no pending job")
    job = create_job(stack_session, thing, {"operation": "reboot"})
    ex = final(stack_session, thing, job)
    assert ex["status"] == "SUCCEEDED", "\n".join(dev.lines)
    assert details(ex)["reason"] == "rebooted"
    assert dev.boots == 2 and dev.exits[0] == 3
