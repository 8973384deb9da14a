"""Runs sharing a scope: a second run can lower a running one's limits, and is told so, but
never raise them; when a run leaves, the others' limits apply again.

The rule on virtual time (tests/vtime.py) with the real coordinator and limiter classes,
then the warning line a driver prints, through a real coordinator actor.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import ray

from actors.ratelimit.coordinated import CoordinatedLimiter
from actors.ratelimit.coordinator import ACTIVE_S, Coordinator, coordinator_for, sharing_note
from actors.ratelimit.limits import Limits
from actors.ratelimit.protocol import CoordinatorSnapshot, Joined, LeaseRequest
from drivers.mock import MockServer
from tests.vtime import START, VirtualClock, VirtualTimeLoop, at, clock, loop, run  # noqa: F401  (fixtures)

MODEL = "gpt-4o-mini"


def make(clock: VirtualClock) -> Coordinator:
    return Coordinator(scope="s", endpoint="http://x/v1", model="m", clock=clock)


def ask(client: str, run: str | None) -> LeaseRequest:
    return LeaseRequest(client=client, run=run, need_requests=1, want_requests=1)


def test_the_lowest_limits_of_the_runs_using_the_scope_hold_for_all(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock)

    async def main() -> None:
        alone = await coordinator.join("A", Limits(rpm=600))
        assert alone == Joined(before=Limits(), given=Limits(rpm=600), others=0)
        await coordinator.lease(ask("a1", "A"))  # run A is sending
        higher = await coordinator.join("B", Limits(rpm=1000))
        assert higher == Joined(before=Limits(rpm=600), given=Limits(rpm=600), others=1)  # B cannot raise A's
        lower = await coordinator.join("C", Limits(rpm=300, tpm=40_000))
        assert lower == Joined(before=Limits(rpm=600), given=Limits(rpm=300, tpm=40_000), others=2)
        assert (await coordinator.snapshot()).limits == Limits(rpm=300, tpm=40_000)

    run(loop, main)


def test_when_the_run_with_the_lowest_limits_leaves_the_others_apply_again(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    """C's adapter closes (a real limiter, talking to the coordinator object): A's adapter,
    watching, hears at once that its own limit is back."""
    coordinator = make(clock)

    async def main() -> None:
        await coordinator.join("A", Limits(rpm=600))
        first = await coordinator.lease(ask("a1", "A"))
        watching = asyncio.ensure_future(coordinator.watch("a1", first.notice.epoch, first.notice.incarnation))
        await coordinator.join("C", Limits(rpm=300))
        assert (await watching).limits == Limits(rpm=300)
        limiter = CoordinatedLimiter(coordinator, client="c1", adapters=1, run="C", clock=clock)
        limiter.settle(await limiter.acquire(0), 0)
        await asyncio.sleep(ACTIVE_S + 1)  # C's join no longer counts on its own; its adapter, watching, does
        notice = await coordinator.lease(ask("a1", "A"))
        assert notice.notice.limits == Limits(rpm=300)
        watching = asyncio.ensure_future(coordinator.watch("a1", notice.notice.epoch, notice.notice.incarnation))
        await limiter.close()
        assert (await watching).limits == Limits(rpm=600) and clock() - START == at(ACTIVE_S + 1)

    run(loop, main)


def test_a_scope_nobody_uses_any_more_takes_the_next_runs_limits(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    """A's adapter falls silent (a driver killed with kill -9 says nothing): after ``ACTIVE_S``
    its limits stop counting, and a run joining then sets the scope's alone, higher too."""
    coordinator = make(clock)

    async def main() -> None:
        await coordinator.join("A", Limits(rpm=300))
        await coordinator.lease(ask("a1", "A"))
        await asyncio.sleep(ACTIVE_S + 1)
        later = await coordinator.join("D", Limits(rpm=1000))
        assert later == Joined(before=Limits(rpm=300), given=Limits(rpm=1000), others=0)

    run(loop, main)


def test_adapters_of_no_known_run_keep_the_limits_they_were_given(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    """A coordinator restarted by Ray (or adapters built without a run) cannot tell whose
    limits its adapters keep to: while they send, a new run can lower the limits, not raise them."""
    coordinator = Coordinator(scope="s", endpoint="http://x/v1", model="m", limits=Limits(rpm=500), clock=clock, restarted=True)

    async def main() -> None:
        await coordinator.lease(ask("x1", None))
        await coordinator.lease(ask("y1", "a-run-it-never-met"))
        higher = await coordinator.join("E", Limits(rpm=1000))
        assert higher == Joined(before=Limits(rpm=500), given=Limits(rpm=500), others=1)
        lower = await coordinator.join("F", Limits(rpm=200))
        assert lower.given == Limits(rpm=200)

    run(loop, main)


def test_the_warning_says_what_holds_and_whose_limits_changed() -> None:
    shared = Joined(before=Limits(rpm=600), given=Limits(rpm=600, tpm=30_000), others=1)
    assert sharing_note(Limits(rpm=1000, tpm=30_000), shared) == (
        "this rate-limit scope is shared with 1 other run: the scope keeps to RPM 600, not your 1,000;"
        " your TPM 30,000 now holds the other runs too (it gave none)."
        " Runs sharing a scope keep to the lowest limits given, until the run that gave them ends."
    )
    lowered = Joined(before=Limits(rpm=600), given=Limits(rpm=300), others=2)
    assert sharing_note(Limits(rpm=300), lowered) == (
        "this rate-limit scope is shared with 2 other runs: your RPM 300 now holds the other runs too (was 600)."
        " Runs sharing a scope keep to the lowest limits given, until the run that gave them ends."
    )
    assert sharing_note(Limits(rpm=600), shared) is None  # the limits in force are its own
    assert sharing_note(Limits(), shared) is None  # it gave none: it keeps to the scope's
    assert sharing_note(Limits(rpm=300), Joined(before=Limits(rpm=600), given=Limits(rpm=300), others=0)) is None  # alone


@pytest.mark.usefixtures("ray_session")
def test_a_second_run_with_other_limits_is_told_in_one_line(server: MockServer, caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-test-shared-by-two-runs"
    first = coordinator_for(server.base_url, key, MODEL, limits=Limits(rpm=600))
    try:
        with caplog.at_level(logging.WARNING, logger="actors.ratelimit.coordinator"):
            second = coordinator_for(server.base_url, key, MODEL, limits=Limits(rpm=1000))
        snap: CoordinatorSnapshot = ray.get(second.snapshot.remote())
    finally:
        ray.kill(first)
    assert second._actor_id == first._actor_id
    [warning] = [record.getMessage() for record in caplog.records if record.name == "actors.ratelimit.coordinator"]
    assert warning.startswith("this rate-limit scope is shared with 1 other run: the scope keeps to RPM 600, not your 1,000.")
    assert snap.given == Limits(rpm=600) and snap.runs == 2
