"""The enforcement window a scope learns (a minute's burst, or the limit metered per second),
and how it shapes the bucket and the leases: the coordinator on virtual time (tests/vtime.py)."""

from __future__ import annotations

import asyncio

import pytest

from actors.ratelimit.budget import RateBudget
from actors.ratelimit.coordinator import MIN_BURST_S, SHRINK_SETTLE_S, Coordinator
from actors.ratelimit.headers import Observation
from actors.ratelimit.limits import Limits
from actors.ratelimit.protocol import LeasePolicy, LeaseRequest, RateLimited
from tests.test_coordinator import ask, report
from tests.vtime import VirtualClock, VirtualTimeLoop, at, clock, loop, run  # noqa: F401  (fixtures)


def make(clock: VirtualClock, rpm: int | None = 600, **policy: float) -> Coordinator:
    """A coordinator with the shipped policy (first window 1 s, headroom 1 s) unless told."""
    return Coordinator(scope="s", endpoint="e", model="m", limits=Limits(rpm=rpm), clock=clock, policy=LeasePolicy(**policy))


def headers(remaining: int, reset: str, limit: int = 600) -> Observation:
    return Observation.from_headers(
        {"x-ratelimit-limit-requests": str(limit), "x-ratelimit-remaining-requests": str(remaining), "x-ratelimit-reset-requests": reset}
    )


@pytest.mark.parametrize(
    ("remaining", "reset", "window"),
    [
        (599, "100ms", 60.0),  # a minute's bucket, one request taken
        (0, "1m0s", 60.0),  # a minute's bucket, empty
        (4, "600ms", 1.0),  # 10 a second, 4 left: refills in 0.6 s
        (9, "100ms", 1.0),
    ],
)
def test_the_window_is_what_remains_plus_the_reset_at_the_refill_rate(remaining: int, reset: str, window: float) -> None:
    assert headers(remaining, reset).window_s() == pytest.approx(window)


def test_no_window_without_all_three_headers_and_the_shortest_dimension_wins() -> None:
    assert Observation(limit_requests=600, remaining_requests=5).window_s() is None
    assert Observation(remaining_requests=5, reset_requests_s=0.5).window_s() is None
    both = Observation(
        limit_requests=600, remaining_requests=599, reset_requests_s=0.1, limit_tokens=60_000, remaining_tokens=500, reset_tokens_s=0.5
    )
    assert both.window_s() == pytest.approx(1.0)  # tokens metered per second, requests per minute


def test_a_new_scope_bursts_one_second_until_the_server_says_more(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=600)

    async def main() -> None:
        snap = await coordinator.snapshot()
        assert snap.burst_s == 1.0 and snap.requests_available == at(5)  # half a second: the rest is headroom
        await coordinator.report("a", [report(observation=headers(599, "100ms"))])
        snap = await coordinator.snapshot()
        assert snap.burst_s == at(60.0) and snap.requests_available == at(590)  # full stays full, one minute less headroom

    run(loop, main)


def test_a_per_second_server_keeps_the_scope_at_one_second(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=600)

    async def main() -> float:
        await coordinator.report("a", [report(observation=headers(9, "100ms"))])
        assert (await coordinator.snapshot()).burst_s == 1.0
        start = clock()
        for _ in range(25):  # a request at a time: 5 at once, then one per 0.1 s
            await coordinator.lease(ask(want=1))
        return clock() - start

    assert run(loop, main) == at(2.0)


def test_429s_despite_room_halve_the_burst_once_per_settling_time_and_distrust_the_headers(
    loop: VirtualTimeLoop, clock: VirtualClock
) -> None:
    coordinator = make(clock, rpm=600, initial_burst_s=60.0)
    quantized = RateLimited(pause_s=0.1, despite_room=True)

    async def main() -> None:
        await coordinator.report("a", [report(rate_limited=quantized)])
        assert (await coordinator.snapshot()).burst_s == 1.0
        await coordinator.report("a", [report(rate_limited=quantized)])  # same burst's 429: no further halving
        assert (await coordinator.snapshot()).burst_s == 1.0
        await coordinator.report("a", [report(observation=headers(599, "100ms"))])  # the headers hide the metering
        assert (await coordinator.snapshot()).burst_s == 1.0
        await asyncio.sleep(SHRINK_SETTLE_S)
        await coordinator.report("a", [report(rate_limited=quantized)])
        assert (await coordinator.snapshot()).burst_s == 0.5
        for _ in range(5):
            await asyncio.sleep(SHRINK_SETTLE_S)
            await coordinator.report("a", [report(rate_limited=quantized)])
        assert (await coordinator.snapshot()).burst_s == MIN_BURST_S

    run(loop, main)


def test_a_429_with_nothing_left_is_a_plain_pause_not_a_shorter_window(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=600, initial_burst_s=60.0)

    async def main() -> None:
        await coordinator.report("a", [report(rate_limited=RateLimited(pause_s=0.5))])
        snap = await coordinator.snapshot()
        assert snap.burst_s == 60.0 and snap.paused_for_s == at(0.5)

    run(loop, main)


def test_leases_are_small_beside_the_window(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    """600 RPM per second: a quarter of the window is 2.5 requests between the adapters."""
    coordinator = make(clock, rpm=600, headroom_s=0.0)

    async def main() -> None:
        first = await coordinator.lease(ask("a", want=50))
        assert first.requests == 2
        await coordinator.lease(ask("b", want=0, need=0))  # a second adapter is heard from
        assert (await coordinator.lease(ask("a", want=50))).requests == 1
        await coordinator.report("a", [report(observation=headers(599, "100ms"))])  # a minute's burst after all
        assert (await coordinator.lease(ask("a", want=50))).requests == 20  # max_lease_s (2 s) of the limit

    run(loop, main)


@pytest.mark.parametrize("request_kind", ["requests", "tokens"])
def test_a_limit_metered_per_second_is_paced_at_the_limit(loop: VirtualTimeLoop, clock: VirtualClock, request_kind: str) -> None:
    """Against a per-second bucket of the server's own kind, the leases granted in any one
    second never exceed what it allows, and over a minute they reach the limit."""
    rpm, tpm = (600, None) if request_kind == "requests" else (None, 60_000)
    coordinator = Coordinator(scope="s", endpoint="e", model="m", limits=Limits(rpm=rpm, tpm=tpm), clock=clock, policy=LeasePolicy())
    server = RateBudget(rpm=rpm, tpm=tpm, clock=clock, burst_s=1.0)  # 10 requests or 1,000 tokens at once
    cost = 1 if rpm else 100
    rejected = 0

    async def adapter(name: str) -> int:
        nonlocal rejected
        sent = 0
        while clock() - start < 60:
            lease = await coordinator.lease(
                LeaseRequest(client=name, need_requests=cost if rpm else 0, need_tokens=0 if rpm else cost, first_tokens=0 if rpm else cost)
            )
            granted = (lease.requests or 0) if rpm else (lease.tokens or 0) // cost
            for _ in range(granted):
                rejected += not server.try_acquire(1 if rpm else 0, 0 if rpm else cost)
            sent += granted
        return sent

    async def main() -> int:
        return sum(await asyncio.gather(*(adapter(f"a{i}") for i in range(4))))

    start = clock()
    sent = run(loop, main)
    assert rejected == 0
    assert sent >= 0.98 * 600
