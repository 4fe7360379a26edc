"""Hostile and oversized input (issue 21): no boot loop, no takeover, no poisoned service."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable

import pytest
from plugin_agent import create_job, details, final
from plugin_stack import unique

from jobsctl.device import DeviceProcess
from jobsctl.stack import Stack

Boards = Callable[..., DeviceProcess]


@pytest.fixture()
def frozen_boards(boards: Boards) -> Boards:
    return functools.partial(boards, frozen=True)


@pytest.mark.parametrize("size", [4_500, 32_000])
def test_a_document_too_large_for_the_board_ends_rejected_naming_the_size_without_a_reset(
    stack_session: Stack, frozen_boards: Boards, size: int
) -> None:
    thing = unique("big")
    dev = frozen_boards(stack_session, thing)
    dev.wait_for("no pending job")
    doc = {"operation": "config", "set": {"settings": {"pad": "x" * size}}}
    job = create_job(stack_session, thing, doc)
    ex = final(stack_session, thing, job, timeout=60)
    assert ex["status"] == "REJECTED", ex
    reason = details(ex)["reason"]
    assert "too large" in reason and str(len(json.dumps(doc)) // 1000) in reason, reason
    assert dev.boots == 1, dev.lines[-20:]
    # ...and the agent goes on: a normal job still succeeds.
    ok = create_job(stack_session, thing, {"operation": "config", "set": {"keepalive_s": 50}})
    assert final(stack_session, thing, ok)["status"] == "SUCCEEDED"


def test_a_job_that_resets_the_board_at_every_boot_ends_failed_and_the_agent_goes_on(
    stack_session: Stack, boards: Boards
) -> None:
    thing = unique("loop")
    dev = boards(stack_session, thing, app=True)
    dev.wait_for("no pending job")
    job = create_job(stack_session, thing, {"operation": "crash"})
    ex = final(stack_session, thing, job, timeout=90)
    assert ex["status"] == "FAILED", ex
    assert "boot loop" in details(ex)["reason"], details(ex)
    # the first run, then BOOT_LOOP (3) resumed runs, each ending in a reset
    assert dev.boots == 5, dev.boots
    assert not (dev.board / "jobstate.json").exists()
    ok = create_job(stack_session, thing, {"operation": "config", "set": {"keepalive_s": 50}})
    assert final(stack_session, thing, ok)["status"] == "SUCCEEDED"
