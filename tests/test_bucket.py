"""Tests for actors.ratelimit.bucket and .budget on virtual time (tests/vtime.py): nothing here really sleeps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.ratelimit.bucket import TokenBucket
from actors.ratelimit.budget import RateBudget
from tests.vtime import START, VirtualClock, VirtualTimeLoop, at, clock, loop, run  # noqa: F401  (fixtures)


async def finish_time(budget: RateBudget, clock: VirtualClock, requests: int, tokens: int) -> float:
    """Acquire and report when (relative to START) it was granted."""
    await budget.acquire(requests, tokens)
    return clock() - START


# -- TokenBucket ----------------------------------------------------------------------


def test_bucket_starts_full_and_bursts_to_capacity() -> None:
    clock = VirtualClock()
    b = TokenBucket(10, 1, clock=clock)
    assert b.level() == 10
    for _ in range(10):
        assert b.try_take(1)
    assert not b.try_take(1)
    assert b.level() == at(0)


def test_bucket_refills_continuously_and_caps_at_capacity() -> None:
    clock = VirtualClock()
    b = TokenBucket(10, 2, clock=clock)
    b.take(10)
    clock.advance(1.5)
    assert b.level() == at(3)
    clock.advance(100)
    assert b.level() == at(10)


def test_try_take_fails_without_taking_anything() -> None:
    clock = VirtualClock()
    b = TokenBucket(10, 1, clock=clock)
    b.take(7)
    assert not b.try_take(4)
    assert b.level() == at(3)
    assert b.try_take(3)
    assert b.level() == at(0)


def test_take_creates_debt_then_recovers() -> None:
    clock = VirtualClock()
    b = TokenBucket(10, 1, clock=clock)
    b.take(15)
    assert b.level() == at(-5)
    assert b.time_until(1) == at(6)
    clock.advance(5)
    assert b.level() == at(0)
    assert not b.try_take(1)
    clock.advance(1)
    assert b.try_take(1)


def test_give_is_clamped_to_capacity() -> None:
    clock = VirtualClock()
    b = TokenBucket(10, 1, clock=clock)
    b.take(4)
    b.give(3)
    assert b.level() == at(9)
    b.give(100)
    assert b.level() == at(10)


def test_time_until() -> None:
    clock = VirtualClock()
    b = TokenBucket(100, 10, clock=clock)
    assert b.time_until(100) == 0
    b.take(100)
    assert b.time_until(0) == 0
    assert b.time_until(25) == at(2.5)
    assert b.time_until(1000) == at(10)  # clamped to capacity: runs once full
    clock.advance(10)
    assert b.try_take(1000)  # huge amount runs on a full bucket and leaves debt
    assert b.level() == at(-900)


def test_set_limit_keeps_fraction_and_changes_rate() -> None:
    clock = VirtualClock()
    b = TokenBucket(60, 1, clock=clock)
    b.take(45)
    b.set_limit(240, 4)
    assert (b.capacity, b.refill_per_s) == (240, 4)
    assert b.level() == at(60)  # 15/60 full -> 60/240 full
    clock.advance(1)
    assert b.level() == at(64)


def test_set_limit_credits_elapsed_time_at_the_old_rate() -> None:
    clock = VirtualClock()
    b = TokenBucket(60, 1, clock=clock)
    b.take(60)
    clock.advance(30)
    b.set_limit(120, 100)
    assert b.level() == at(60)  # 30/60 at the old rate, not 3000 at the new one


def test_clamp_to_only_lowers() -> None:
    clock = VirtualClock()
    b = TokenBucket(100, 1, clock=clock)
    b.clamp_to(30)
    assert b.level() == at(30)
    b.clamp_to(80)
    assert b.level() == at(30)
    clock.advance(5)
    assert b.level() == at(35)


def test_bucket_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(10, 0)


# -- RateBudget: granting -------------------------------------------------------------


def test_acquire_is_immediate_while_capacity_lasts(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=6000, clock=clock)

    async def main() -> None:
        for _ in range(60):
            await budget.acquire(1, 100)
        assert clock() == START
        assert clock.jumps == 0

    run(loop, main)
    assert budget.snapshot()["requests_available"] == at(0)
    assert budget.snapshot()["tokens_available"] == at(0)


def test_61st_request_waits_exactly_one_second(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)

    async def main() -> float:
        for _ in range(60):
            await budget.acquire(1, 0)
        return await finish_time(budget, clock, 1, 0)

    assert run(loop, main) == at(1.0)


def test_tokens_wait_for_the_tpm_bucket(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=1000, tpm=600, clock=clock)  # 10 tokens/s

    async def main() -> float:
        await budget.acquire(1, 600)
        return await finish_time(budget, clock, 1, 250)

    assert run(loop, main) == at(25.0)


def test_waiting_is_timer_driven_not_polled(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=None, tpm=60, clock=clock)  # 1 token/s

    async def main() -> float:
        await budget.acquire(0, 60)
        return await finish_time(budget, clock, 0, 50)

    assert run(loop, main) == at(50.0)
    assert clock.jumps == 1  # one call_at wake, no sleep loop


def test_fifo_big_request_not_starved_by_later_small_ones(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=None, tpm=600, clock=clock)  # 10 tokens/s
    order: list[str] = []

    async def waiter(name: str, tokens: int) -> float:
        t = await finish_time(budget, clock, 1, tokens)
        order.append(name)
        return t

    async def main() -> list[float]:
        await budget.acquire(1, 600)
        big = asyncio.create_task(waiter("big", 500))
        await asyncio.sleep(0)
        smalls = [asyncio.create_task(waiter(f"small{i}", 10)) for i in range(3)]
        await asyncio.sleep(0)
        assert not budget.try_acquire(0, 0)  # nothing jumps the queue
        await asyncio.sleep(1)
        budget.refund(0, 100)  # 110 available: enough for every small one, not for big
        return list(await asyncio.gather(big, *smalls))

    times = run(loop, main)
    assert order == ["big", "small0", "small1", "small2"]
    assert times == [at(40), at(41), at(42), at(43)]  # big at (500 - 110) / 10 + 1 s


def test_waiters_behind_a_ready_head_are_granted_together(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)

    async def main() -> list[float]:
        await budget.acquire(60, 0)
        tasks = [asyncio.create_task(finish_time(budget, clock, 1, 0)) for _ in range(3)]
        await asyncio.sleep(0)
        budget.refund(3, 0)
        return list(await asyncio.gather(*tasks))

    assert run(loop, main) == [0, 0, 0]
    assert clock.jumps == 0


def test_cancelled_head_waiter_frees_the_queue(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=None, tpm=600, clock=clock)  # 10 tokens/s

    async def main() -> float:
        await budget.acquire(1, 600)
        big = asyncio.create_task(budget.acquire(1, 500))
        await asyncio.sleep(0)
        small = asyncio.create_task(finish_time(budget, clock, 1, 10))
        await asyncio.sleep(1)
        big.cancel()
        with pytest.raises(asyncio.CancelledError):
            await big
        t = await small
        assert budget.snapshot()["queued"] == 0
        return t

    assert run(loop, main) == at(1.0)
    snap = budget.snapshot()
    assert snap["tokens_available"] == at(0)
    assert snap["granted_tokens"] == 610


def test_cancel_racing_a_grant_returns_the_capacity(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=600, clock=clock)

    async def main() -> None:
        await budget.acquire(60, 600)
        task = asyncio.create_task(budget.acquire(5, 200))
        await asyncio.sleep(0)
        budget.refund(10, 300)  # grants the waiter synchronously...
        assert budget.snapshot()["queued"] == 0
        task.cancel()  # ...but it is cancelled before it resumes
        with pytest.raises(asyncio.CancelledError):
            await task

    run(loop, main)
    snap = budget.snapshot()
    assert snap["requests_available"] == at(10)
    assert snap["tokens_available"] == at(300)
    assert (snap["granted_requests"], snap["granted_tokens"]) == (60, 600)


def test_cancelled_middle_waiter_is_skipped(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)

    async def main() -> tuple[float, float]:
        await budget.acquire(60, 0)
        first = asyncio.create_task(finish_time(budget, clock, 1, 0))
        middle = asyncio.create_task(budget.acquire(1, 0))
        last = asyncio.create_task(finish_time(budget, clock, 1, 0))
        await asyncio.sleep(0)
        middle.cancel()
        await asyncio.gather(middle, return_exceptions=True)
        return await first, await last

    assert run(loop, main) == (at(1), at(2))


def test_try_acquire(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=600, clock=clock)
    assert budget.try_acquire(10, 100)
    assert not budget.try_acquire(1, 501)  # tpm short: nothing taken from rpm either
    snap = budget.snapshot()
    assert (snap["requests_available"], snap["tokens_available"]) == (at(50), at(500))
    budget.pause_until(START + 1)
    assert not budget.try_acquire(1, 1)
    clock.advance(1)
    assert budget.try_acquire(1, 1)


def test_try_acquire_does_not_jump_queued_waiters(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=None, tpm=600, clock=clock)

    async def main() -> None:
        await budget.acquire(0, 600)
        task = asyncio.create_task(budget.acquire(0, 100))
        await asyncio.sleep(5)  # 50 tokens available, head still needs 100
        assert budget.snapshot()["tokens_available"] == at(50)
        assert not budget.try_acquire(0, 10)
        await task

    run(loop, main)
    assert clock() - START == at(10)


def test_negative_amounts_rejected() -> None:
    budget = RateBudget(rpm=60, tpm=600)
    with pytest.raises(ValueError):
        budget.try_acquire(-1, 0)
    with pytest.raises(ValueError):
        budget.refund(0, -5)


# -- RateBudget: settling -------------------------------------------------------------


def test_reconcile_refunds_surplus_and_charges_debt(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=None, tpm=600, clock=clock)  # 10 tokens/s
    assert budget.try_acquire(1, 300)
    budget.reconcile(300, 100)
    assert budget.snapshot()["tokens_available"] == at(500)
    assert budget.try_acquire(1, 500)
    budget.reconcile(500, 700)  # used 200 more than estimated
    snap = budget.snapshot()
    assert snap["tokens_available"] == at(-200)
    assert (snap["granted_tokens"], snap["refunded_tokens"]) == (1000, 200)

    async def main() -> float:
        return await finish_time(budget, clock, 1, 100)

    assert run(loop, main) == at(30.0)  # repay 200 of debt, then 100 more


def test_reconcile_surplus_wakes_a_waiter(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=None, tpm=600, clock=clock)

    async def main() -> float:
        await budget.acquire(1, 600)
        task = asyncio.create_task(finish_time(budget, clock, 1, 400))
        await asyncio.sleep(2)  # 20 tokens refilled
        budget.reconcile(600, 200)
        return await task

    assert run(loop, main) == at(2.0)


def test_refund_returns_unused_lease_and_wakes_waiter(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=60_000, clock=clock)

    async def main() -> float:
        await budget.acquire(60, 20_000)  # a lease
        task = asyncio.create_task(finish_time(budget, clock, 5, 1000))
        await asyncio.sleep(0.5)
        budget.refund(5, 5000)  # 0.5 + 5 requests >= 5
        return await task

    assert run(loop, main) == at(0.5)
    snap = budget.snapshot()
    assert (snap["refunded_requests"], snap["refunded_tokens"]) == (5, 5000)
    assert snap["requests_available"] == at(0.5)
    assert snap["tokens_available"] == at(60_000 - 20_000 + 500 + 5000 - 1000)


# -- RateBudget: server feedback ------------------------------------------------------


def test_pause_blocks_until_deadline_even_with_capacity(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)
    budget.pause_until(START + 5)
    assert budget.paused_until == START + 5

    async def main() -> float:
        return await finish_time(budget, clock, 1, 0)

    assert run(loop, main) == at(5.0)
    assert budget.paused_until is None


def test_shorter_pause_never_shortens_later_one_extends(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)

    async def main() -> float:
        budget.pause_until(START + 5)
        task = asyncio.create_task(finish_time(budget, clock, 1, 0))
        await asyncio.sleep(1)
        budget.pause_until(START + 2)
        assert budget.paused_until == START + 5
        await asyncio.sleep(2)
        budget.pause_until(START + 8)
        assert budget.paused_until == START + 8
        return await task

    assert run(loop, main) == at(8.0)


def test_pause_ending_before_refill_waits_for_the_bucket(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)

    async def main() -> float:
        await budget.acquire(60, 0)
        budget.pause_until(START + 2)
        return await finish_time(budget, clock, 7, 0)

    assert run(loop, main) == at(7.0)


def test_observe_remaining_clamps_down_only(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=600, clock=clock)
    budget.observe_remaining(requests=100, tokens=5000)  # more than we think: ignored
    snap = budget.snapshot()
    assert (snap["requests_available"], snap["tokens_available"]) == (at(60), at(600))
    budget.observe_remaining(requests=None, tokens=100)
    snap = budget.snapshot()
    assert (snap["requests_available"], snap["tokens_available"]) == (at(60), at(100))

    async def main() -> float:
        return await finish_time(budget, clock, 1, 200)

    assert run(loop, main) == at(10.0)


def test_observe_remaining_while_waiting_delays_the_wake(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)

    async def main() -> float:
        await budget.acquire(55, 0)
        task = asyncio.create_task(finish_time(budget, clock, 10, 0))  # ready at 5 s
        await asyncio.sleep(1)
        budget.observe_remaining(requests=0, tokens=None)  # server: none left at 1 s
        return await task

    assert run(loop, main) == at(11.0)
    assert clock.jumps == 2  # the sleep, then one wake rescheduled to 11 s (not 5 s)


def test_set_limits_raise_wakes_waiter_early(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)

    async def main() -> float:
        await budget.acquire(60, 0)
        task = asyncio.create_task(finish_time(budget, clock, 1, 0))  # 1 s at 60 rpm
        await asyncio.sleep(0.25)
        budget.set_limits(rpm=240)  # 0.25/60 full -> 1/240 full
        return await task

    assert run(loop, main) == at(0.25)
    assert budget.snapshot()["rpm"] == 240


def test_set_limits_none_keeps_and_new_dimension_starts_limited(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)
    budget.set_limits(tpm=600)
    snap = budget.snapshot()
    assert (snap["rpm"], snap["tpm"], snap["tokens_available"]) == (60, 600, at(600))
    assert budget.try_acquire(1, 600)
    assert not budget.try_acquire(1, 1)


def test_unlimited_dimensions(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=None, tpm=None, clock=clock)

    async def main() -> None:
        for _ in range(1000):
            await budget.acquire(10, 1_000_000)
        budget.reconcile(10, 1_000_000)  # debt on an unlimited dimension is a no-op

    run(loop, main)
    assert clock() == START
    snap = budget.snapshot()
    assert (snap["rpm"], snap["tpm"], snap["requests_available"], snap["tokens_available"]) == (None,) * 4
    assert snap["granted_requests"] == 10_000


def test_request_above_capacity_runs_when_full_and_leaves_debt(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=None, tpm=600, clock=clock)

    async def main() -> tuple[float, float]:
        await budget.acquire(0, 300)
        huge = await finish_time(budget, clock, 0, 1000)  # waits for a full bucket
        after = await finish_time(budget, clock, 0, 10)  # then repays 400 of debt
        return huge, after

    assert run(loop, main) == (at(30), at(30 + 41))


def test_snapshot_fields(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=600, clock=clock)

    async def main() -> dict[str, Any]:
        await budget.acquire(60, 100)
        task = asyncio.create_task(budget.acquire(1, 1))
        await asyncio.sleep(0)
        budget.refund(0, 50)
        budget.pause_until(START + 3)
        snap = budget.snapshot()
        await task
        return snap

    assert run(loop, main) == {
        "rpm": 60,
        "tpm": 600,
        "burst_s": 60.0,
        "requests_available": at(0),
        "tokens_available": at(550),
        "queued": 1,
        "paused_until": START + 3,
        "granted_requests": 60,
        "granted_tokens": 100,
        "refunded_requests": 0,
        "refunded_tokens": 50,
    }
    assert clock() - START == at(3)


def test_budget_is_loop_local(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)

    async def wait_once() -> None:
        budget.pause_until(clock() + 1)
        await budget.acquire(1, 0)

    run(loop, wait_once)
    other = VirtualTimeLoop(clock)
    try:
        with pytest.raises(RuntimeError, match="different event loop"):
            other.run_until_complete(wait_once())
    finally:
        other.close()


# -- RateBudget: starting empty, charging, shutting -----------------------------------


def test_budget_can_start_empty(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=600, clock=clock, full=False)
    assert not budget.try_acquire(1, 0)

    async def main() -> float:
        return await finish_time(budget, clock, 2, 20)

    assert run(loop, main) == at(2.0)


def test_charge_takes_without_waiting_and_leaves_debt(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)
    budget.charge(70, 5)  # spent elsewhere: more than the whole bucket
    snap = budget.snapshot()
    assert snap["requests_available"] == at(-10)
    assert snap["granted_requests"] == 70

    async def main() -> float:
        return await finish_time(budget, clock, 1, 0)

    assert run(loop, main) == at(11.0)


def test_shut_fails_queued_and_later_waiters(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)

    async def main() -> None:
        await budget.acquire(60, 0)
        queued = asyncio.create_task(budget.acquire(1, 0))
        await asyncio.sleep(0.5)
        budget.shut(lambda: LookupError("scope stopped"))
        with pytest.raises(LookupError):
            await queued
        with pytest.raises(LookupError):
            await budget.acquire(1, 0)
        clock.advance(100)
        with pytest.raises(LookupError):
            budget.try_acquire(1, 0)

    run(loop, main)
    assert clock() - START == at(100.5)  # the queued waiter did not wait for its 1 s


# -- RateBudget: server observations that arrive late ---------------------------------


def test_late_observation_counts_refill_and_our_grants_since(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)  # 1 request/s
    clock.advance(0.5)
    assert budget.try_acquire(20, 0)  # at 0.5 s: 40 left
    clock.advance(0.5)
    # The server said "50 remaining" at 0 s (someone else took 10); we hear it at 1 s.
    budget.observe_remaining(requests=50, tokens=None, age_s=1.0)
    assert budget.snapshot()["requests_available"] == at(50 + 1 - 20)


def test_late_observation_alone_on_the_key_never_tightens(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=600, clock=clock)
    assert budget.try_acquire(60, 600)  # drained; the server agrees at this moment
    clock.advance(5)
    budget.observe_remaining(requests=0, tokens=0, age_s=5.0)  # heard 5 s later
    snap = budget.snapshot()
    assert (snap["requests_available"], snap["tokens_available"]) == (at(5), at(50))


def test_observation_older_than_the_ledger_is_ignored(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)
    clock.advance(100)
    budget.observe_remaining(requests=0, tokens=None, age_s=61.0)
    assert budget.snapshot()["requests_available"] == at(60)
    budget.observe_remaining(requests=0, tokens=None, age_s=59.0)
    assert budget.snapshot()["requests_available"] == at(59)


def test_ledger_keeps_only_a_minute(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=6000, tpm=None, clock=clock)
    for _ in range(600):
        clock.advance(1)
        assert budget.try_acquire(1, 0)
    assert len(budget._ledger._entries) <= 62
    budget.observe_remaining(requests=0, tokens=None, age_s=30.0)  # we took 30 since
    assert budget.snapshot()["requests_available"] == at(0 + 100 * 30 - 30)


def test_take_available_takes_what_is_there_without_waiting(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=600, clock=clock)
    assert budget.try_acquire(50, 550)
    assert budget.take_available(20, 20) == (10, 20)
    assert budget.take_available(5, 100) == (0, 30)
    clock.advance(2.5)
    assert budget.take_available(5, 0) == (2, 0)  # whole requests only
    snap = budget.snapshot()
    assert (snap["requests_available"], snap["granted_requests"], snap["granted_tokens"]) == (at(0.5), 62, 600)
    unlimited = RateBudget(rpm=None, tpm=None, clock=clock)
    assert unlimited.take_available(7, 9) == (7, 9)


def test_take_available_gives_nothing_while_others_wait_or_paused(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=60, tpm=None, clock=clock)

    async def main() -> None:
        await budget.acquire(55, 0)
        waiter = asyncio.create_task(budget.acquire(10, 0))
        await asyncio.sleep(1)
        assert budget.take_available(3, 0) == (0, 0)  # 6 are there, but the head waits for 10
        await waiter
        budget.pause_until(clock() + 5)
        clock.advance(2)
        assert budget.take_available(1, 0) == (0, 0)
        budget.shut(lambda: LookupError("stopped"))
        clock.advance(10)
        assert budget.take_available(1, 0) == (0, 0)

    run(loop, main)


def test_headroom_holds_the_buckets_below_a_full_minute(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    budget = RateBudget(rpm=600, tpm=None, clock=clock, headroom_s=3.0)  # 10/s, 30 short of 600
    assert budget.snapshot()["requests_available"] == at(570)
    budget.set_limits(rpm=1200, tpm=6000)
    snap = budget.snapshot()
    assert (snap["rpm"], snap["tpm"], snap["requests_available"], snap["tokens_available"]) == (1200, 6000, at(1140), at(5700))
    with pytest.raises(ValueError, match="headroom"):
        RateBudget(rpm=60, tpm=None, headroom_s=60)


def test_resize_keeps_what_is_missing() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(10, 10, clock=clock)
    bucket.take(8)
    bucket.resize(600)
    assert bucket.level() == at(592)  # 8 short of full, as before
    bucket.resize(5)
    assert bucket.level() == at(5)  # no more than it holds
    bucket.take(7)
    bucket.resize(20)
    assert bucket.level() == at(13)  # debt of 2 kept, capacity grown by 15
