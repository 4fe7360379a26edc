"""A board that dies mid-job: the agent's step timeout ends the execution TIMED_OUT, a retry
config brings the job back to the board after power-on; `jobsctl job ota`/`create` set the
timeout, abort and retry policies."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plugin_agent import arn, details, execution, final
from plugin_stack import unique, wait_until

from jobsctl import cli, image, otajob
from jobsctl.device import DeviceProcess
from jobsctl.stack import Stack

Boards = Callable[..., DeviceProcess]


def test_board_killed_mid_job_ends_timed_out_and_a_retry_runs_it_after_power_on(
    stack_session: Stack, boards: Boards
) -> None:
    thing = unique("steptimer")
    dev = boards(stack_session, thing, app=True, step_timeout_min=2)
    dev.wait_for("no pending job")
    job = unique("job")
    stack_session.iot_client().create_job(
        jobId=job,
        targets=[arn(stack_session, thing)],
        document=json.dumps({"operation": "wait", "until": "go"}),
        jobExecutionsRetryConfig={
            "criteriaList": [{"failureType": "TIMED_OUT", "numberOfRetries": 1}]
        },
    )
    dev.wait_for(f"{job}: waiting for go (run 1)")
    ex = execution(stack_session, thing, job)
    # the agent's IN_PROGRESS carried stepTimeoutInMinutes = step_timeout_min
    assert ex["status"] == "IN_PROGRESS" and 60 < ex["approximateSecondsBeforeTimedOut"] <= 120
    dev.kill()  # power cut: no more reports
    stack_session.advance_clock(119)
    assert execution(stack_session, thing, job)["status"] == "IN_PROGRESS"
    stack_session.advance_clock(2)
    first = stack_session.iot_client().describe_job_execution(
        jobId=job, thingName=thing, executionNumber=1
    )["execution"]
    assert first["status"] == "TIMED_OUT"
    again = execution(stack_session, thing, job)
    assert again["status"] == "QUEUED" and again["executionNumber"] == 2
    (dev.board / "go").touch()
    dev.start()
    ex = final(stack_session, thing, job)
    assert ex["status"] == "SUCCEEDED" and ex["executionNumber"] == 2
    assert details(ex)["reason"] == "done"


def test_the_agent_sends_its_default_step_timeout_with_in_progress(
    stack_session: Stack, boards: Boards
) -> None:
    thing = unique("steptimer")
    dev = boards(stack_session, thing, app=True)
    dev.wait_for("no pending job")
    job = unique("job")
    stack_session.iot_client().create_job(
        jobId=job,
        targets=[arn(stack_session, thing)],
        document=json.dumps({"operation": "wait", "until": "go"}),
    )
    dev.wait_for(f"{job}: waiting for go (run 1)")
    left = execution(stack_session, thing, job)["approximateSecondsBeforeTimedOut"]
    assert 14 * 60 < left <= 15 * 60  # config.py's default step_timeout_min
    stack_session.advance_clock(10 * 60)
    assert execution(stack_session, thing, job)["approximateSecondsBeforeTimedOut"] <= 5 * 60
    (dev.board / "go").touch()  # the final report comes well inside the step
    assert final(stack_session, thing, job)["status"] == "SUCCEEDED"


def test_jobsctl_job_ota_sets_an_in_progress_timeout_and_abort_criteria_by_default(
    stack_session: Stack, tmp_path: Path, capsys: Any
) -> None:
    thing = unique("otapolicy")
    stack_session.create_thing(thing)
    f = tmp_path / "app.bin"
    f.write_bytes(image.build_app_image("4.1.0", size=4096))
    state = ["--state-dir", str(stack_session.state_dir), "--targets", thing]
    job = unique("cli")
    assert cli.main(["job", "ota", job, *state, "--file", str(f)]) == 0
    capsys.readouterr()
    desc = stack_session.iot_client().describe_job(jobId=job)["job"]
    assert desc["timeoutConfig"] == {
        "inProgressTimeoutInMinutes": otajob.OTA_IN_PROGRESS_TIMEOUT_MIN
    }
    assert desc["abortConfig"]["criteriaList"] == [
        {
            "failureType": "ALL",
            "action": "CANCEL",
            "thresholdPercentage": otajob.OTA_ABORT_PERCENT,
            "minNumberOfExecutedThings": otajob.OTA_ABORT_MIN_EXECUTED,
        }
    ]
    assert "jobExecutionsRetryConfig" not in desc
    bare = unique("cli")
    argv = ["job", "ota", bare, *state, "--file", str(f)]
    assert cli.main([*argv, "--in-progress-timeout", "0", "--abort-percent", "0"]) == 0
    desc = stack_session.iot_client().describe_job(jobId=bare)["job"]
    assert "timeoutConfig" not in desc and "abortConfig" not in desc
    made = unique("cli")
    argv = ["job", "create", made, *state, "--document-json", '{"operation": "reboot"}']
    assert cli.main([*argv, "--retries", "3", "--in-progress-timeout", "30"]) == 0
    desc = stack_session.iot_client().describe_job(jobId=made)["job"]
    assert desc["jobExecutionsRetryConfig"] == {
        "criteriaList": [{"failureType": "ALL", "numberOfRetries": 3}]
    }
    assert desc["timeoutConfig"] == {"inProgressTimeoutInMinutes": 30}
    assert "abortConfig" not in desc
    aborting = unique("cli")
    argv2 = [*argv[:2], aborting, *argv[3:], "--abort-percent", "12.5", "--abort-min-things", "2"]
    assert cli.main(argv2) == 0
    criteria = stack_session.iot_client().describe_job(jobId=aborting)["job"]["abortConfig"]
    assert criteria["criteriaList"][0]["thresholdPercentage"] == 12.5
    assert criteria["criteriaList"][0]["minNumberOfExecutedThings"] == 2
    capsys.readouterr()
    assert cli.main([*argv[:2], unique("cli"), *argv[3:], "--in-progress-timeout", "10081"]) == 1
    assert "10080" in capsys.readouterr().err


# A product's main.py whose handler reports progress each time the test creates stepN.
STEPS_APP = """\
from iotjobs import agent, app


async def steps(ctx, doc):
    n = 0
    while True:
        try:
            open(doc["until"]).close()
            break
        except OSError:
            pass
        try:
            open("step%d" % (n + 1)).close()
            n += 1
            await ctx.progress({"step": str(n)}, force=True)
            ctx.log("reported step %d" % n)
        except OSError:
            pass
        await ctx.check()
        await ctx.sleep(20)
    return {"reason": "done"}


agent.register("steps", steps)
app.run()
"""


def test_each_progress_report_restarts_the_step_timer(stack_session: Stack, boards: Boards) -> None:
    thing = unique("steptimer")
    dev = boards(stack_session, thing, app=True, start=False, step_timeout_min=2)
    (dev.board / "approot" / "main.py").write_text(STEPS_APP)
    dev.start()
    dev.wait_for("no pending job")
    job = unique("job")
    stack_session.iot_client().create_job(
        jobId=job,
        targets=[arn(stack_session, thing)],
        document=json.dumps({"operation": "steps", "until": "go"}),
    )
    wait_until(
        lambda: details(execution(stack_session, thing, job)).get("step") == "started",
        what="the agent's first IN_PROGRESS",
    )
    stack_session.advance_clock(100)  # 20 s of the 2-minute step left
    assert execution(stack_session, thing, job)["approximateSecondsBeforeTimedOut"] <= 20
    (dev.board / "step1").touch()
    dev.wait_for(f"{job}: reported step 1")
    assert execution(stack_session, thing, job)["approximateSecondsBeforeTimedOut"] > 100
    stack_session.advance_clock(100)  # 200 s after the start: alive thanks to the report
    ex = execution(stack_session, thing, job)
    assert ex["status"] == "IN_PROGRESS" and details(ex) == {"step": "1"}
    (dev.board / "go").touch()
    assert final(stack_session, thing, job)["status"] == "SUCCEEDED"


# A product's main.py whose handler fails while the file "fail" exists (removing it).
FLAKY_APP = """\
import os

from iotjobs import agent, app


async def flaky(ctx, doc):
    try:
        os.remove("fail")
    except OSError:
        return {"reason": "ran again"}
    raise agent.Failed("failed once")


agent.register("flaky", flaky)
app.run()
"""


def test_a_failed_execution_is_retried_and_the_board_runs_it_again(
    stack_session: Stack, boards: Boards
) -> None:
    thing = unique("retry")
    dev = boards(stack_session, thing, app=True, start=False)
    (dev.board / "approot" / "main.py").write_text(FLAKY_APP)
    (dev.board / "fail").touch()
    dev.start()
    dev.wait_for("no pending job")
    job = unique("job")
    stack_session.iot_client().create_job(
        jobId=job,
        targets=[arn(stack_session, thing)],
        document=json.dumps({"operation": "flaky"}),
        jobExecutionsRetryConfig={
            "criteriaList": [{"failureType": "FAILED", "numberOfRetries": 1}]
        },
    )
    ex = final(stack_session, thing, job)
    assert ex["status"] == "SUCCEEDED" and ex["executionNumber"] == 2
    assert details(ex)["reason"] == "ran again"
    first = stack_session.iot_client().describe_job_execution(
        jobId=job, thingName=thing, executionNumber=1
    )["execution"]
    assert first["status"] == "FAILED" and details(first)["reason"] == "failed once"
    assert dev.boots == 1  # no reset: the agent took the re-queued execution like any other


def test_an_idle_agent_with_a_watchdog_feeds_it_while_it_waits_for_its_socket(
    stack_session: Stack, boards: Boards
) -> None:
    # The idle agent waits for its MQTT socket, not on a tick; with a watchdog it still wakes
    # to feed it (half its timeout): across five feeds (two and a half timeouts) the board is
    # never bitten and runs the same process.
    thing = unique("wdt")
    dev = boards(stack_session, thing, wdt_timeout_ms=2000)
    dev.wait_for("no pending job")
    pid = dev.pid
    fed = dev.board / "wdt.fed"
    seen: list[float] = []

    def feeds() -> bool:
        t = fed.stat().st_mtime
        if not seen or t != seen[-1]:
            seen.append(t)
        return len(seen) > 5

    wait_until(feeds, timeout=30)
    assert dev.watchdog_resets == 0 and dev.pid == pid, "\n".join(dev.lines)
    assert not any("watchdog" in line for line in dev.lines), "\n".join(dev.lines)
