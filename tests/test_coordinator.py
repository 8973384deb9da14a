"""The coordinator's logic as a plain async class on virtual time (tests/vtime.py)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from actors.errors import TaskError
from actors.ratelimit.coordinator import WATCH_TIMEOUT_S, Coordinator, scope_name
from actors.ratelimit.headers import Observation
from actors.ratelimit.limits import Limits
from actors.ratelimit.protocol import LeasePolicy, LeaseRequest, RateLimited, Report
from tests.vtime import START, VirtualClock, VirtualTimeLoop, at, clock, loop, run  # noqa: F401  (fixtures)

QUOTA = TaskError(code="insufficient_quota", message="no credit left", status_code=429)
_SEQ = itertools.count()


def report(**fields: object) -> Report:
    return Report(seq=next(_SEQ), **fields)  # type: ignore[arg-type]


def make(
    clock: VirtualClock,
    rpm: int | None = 600,
    tpm: int | None = None,
    *,
    policy: LeasePolicy | None = None,
    headroom_s: float = 0.0,
    burst_s: float = 60.0,
    **kwargs: object,
) -> Coordinator:
    """A coordinator whose bucket holds the full minute (a server that allows a minute's
    burst at once), unless ``headroom_s`` or ``burst_s`` say otherwise."""
    policy = (policy or LeasePolicy()).model_copy(update={"headroom_s": headroom_s, "initial_burst_s": burst_s})
    return Coordinator(scope="s", endpoint="http://x/v1", model="m", limits=Limits(rpm=rpm, tpm=tpm), clock=clock, policy=policy, **kwargs)  # type: ignore[arg-type]


def ask(
    client: str = "a", *, want: int = 1, need: int | None = None, want_tokens: int = 0, need_tokens: int | None = None, **fields: object
) -> LeaseRequest:
    """A lease request; by default the adapter has as many requests waiting as it wants."""
    return LeaseRequest(
        client=client,
        reports=[report(**fields)] if fields else [],
        need_requests=want if need is None else need,
        want_requests=want,
        need_tokens=want_tokens if need_tokens is None else need_tokens,
        want_tokens=want_tokens,
    )


def test_scope_name_hides_the_key_and_separates_scopes() -> None:
    name = scope_name("https://api.openai.com/v1", "sk-secret-123", "gpt-4o-mini")
    assert name == scope_name("https://api.openai.com/v1", "sk-secret-123", "gpt-4o-mini")
    assert "sk-" not in name and "secret" not in name and len(name) == len("rayfan-limits-") + 16
    assert name != scope_name("https://api.openai.com/v1", "sk-secret-123", "gpt-4o")
    assert name != scope_name("https://api.openai.com/v1", "sk-other", "gpt-4o-mini")


# -- leases ---------------------------------------------------------------------------


def test_lease_waits_for_need_and_takes_want_only_if_spare(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=600, tpm=60_000, policy=LeasePolicy(max_lease_s=2.0))  # 10 req/s, 1000 tok/s

    async def main() -> None:
        lease = await coordinator.lease(ask(want=100, want_tokens=10_000))
        assert (lease.requests, lease.tokens) == (20, 2000)  # capped at 2 s of the limit
        lease = await coordinator.lease(ask(need=1, want=5, need_tokens=50, want_tokens=300))
        assert (lease.requests, lease.tokens) == (5, 300)  # the extra was there: taken
        lease = await coordinator.lease(ask(need=1, want=1, need_tokens=5000, want_tokens=5000))
        assert lease.tokens == 2000  # capped: the rest of the queue asks again
        big = LeaseRequest(client="a", need_requests=1, need_tokens=5000, first_tokens=5000, want_requests=1, want_tokens=5000)
        assert (await coordinator.lease(big)).tokens == 5000  # the first waiter is always served whole
        assert clock() == START

    run(loop, main)


def test_lease_at_the_limit_waits_only_for_what_is_waiting(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=60, policy=LeasePolicy(max_lease_s=60.0, burst_share=1.0))  # 1 request/s

    async def main() -> None:
        await coordinator.lease(ask(want=60))
        lease = await coordinator.lease(ask(need=2, want=30))  # a recent rate of 30 per horizon
        assert lease.requests == 2 and clock() - START == at(2.0)  # not 30 s for a pool of 30

    run(loop, main)


def test_leases_wait_in_order_for_the_budget(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=60, policy=LeasePolicy(max_lease_s=60.0, burst_share=1.0))  # 1 request/s
    granted: list[tuple[str, float]] = []

    async def lease(client: str, want: int) -> None:
        lease = await coordinator.lease(ask(client, want=want))
        granted.append((client, clock() - START))
        assert lease.requests == want

    async def main() -> None:
        await lease("first", 60)
        await asyncio.gather(lease("a", 5), lease("b", 1), lease("c", 2))

    run(loop, main)
    assert granted == [("first", at(0)), ("a", at(5)), ("b", at(6)), ("c", at(8))]


def test_returned_capacity_is_leased_again_at_once(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=60, policy=LeasePolicy(max_lease_s=60.0, burst_share=1.0))

    async def main() -> float:
        await coordinator.lease(ask("a", want=60))
        waiting = asyncio.create_task(coordinator.lease(ask("b", want=10)))
        await asyncio.sleep(1)
        await coordinator.report("a", [report(returned_requests=9, sent=51)])
        await waiting
        return clock() - START

    assert run(loop, main) == at(1.0)


def test_held_capacity_and_its_expiry_show_in_the_snapshot(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=600, tpm=60_000, policy=LeasePolicy(ttl_s=10.0, horizon_s=5.0))

    async def main() -> None:
        await coordinator.lease(ask("a", want=20, need_tokens=10, want_tokens=1000))
        await coordinator.lease(ask("b", want=4, need_tokens=10, want_tokens=100))
        snap = await coordinator.snapshot()
        assert (snap.leases_outstanding, snap.held_requests, snap.held_tokens, snap.clients) == (2, 24, 1100, 2)
        await coordinator.report("a", [report(sent=15, reserved_tokens=600, used_tokens=500)])
        snap = await coordinator.snapshot()
        assert (snap.held_requests, snap.held_tokens) == (9, 500)
        assert (snap.requests_sent, snap.reserved_tokens, snap.used_tokens) == (15, 600, 500)
        await asyncio.sleep(10)
        snap = await coordinator.snapshot()
        assert snap.leases_outstanding == 0 and snap.held_requests == 0

    run(loop, main)


def test_reconcile_refunds_surplus_and_charges_overrun(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=None, tpm=6000)

    async def main() -> None:
        await coordinator.lease(ask(need=0, want=0, need_tokens=200, want_tokens=200))
        assert (await coordinator.snapshot()).tokens_available == at(5800)
        await coordinator.report("a", [report(returned_tokens=150)])  # settled under the estimate
        assert (await coordinator.snapshot()).tokens_available == at(5950)
        await coordinator.report("a", [report(returned_tokens=-400)])  # over the estimate
        assert (await coordinator.snapshot()).tokens_available == at(5550)

    run(loop, main)


def test_fallback_spending_is_charged_as_debt(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=60, policy=LeasePolicy(max_lease_s=60.0, burst_share=1.0))

    async def main() -> float:
        await coordinator.lease(ask(want=50))
        await coordinator.report("a", [report(returned_requests=-20)])  # spent alone while away
        assert (await coordinator.snapshot()).requests_available == at(-10)
        await coordinator.lease(ask(want=1))
        return clock() - START

    assert run(loop, main) == at(11.0)


def test_a_report_sent_twice_is_applied_once(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=60, policy=LeasePolicy(max_lease_s=60.0, burst_share=1.0))
    returned = report(returned_requests=10, sent=5)

    async def main() -> None:
        await coordinator.lease(ask(want=60))
        await coordinator.report("a", [returned])
        await coordinator.lease(LeaseRequest(client="a", reports=[returned, report(sent=1)], need_requests=0))
        snap = await coordinator.snapshot()
        assert snap.requests_available == at(10) and snap.requests_sent == 6
        await coordinator.report("b", [returned])  # numbers are per adapter
        assert (await coordinator.snapshot()).requests_available == at(20)

    run(loop, main)


def test_adapters_long_gone_are_forgotten(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=600)

    async def main() -> None:
        for name in ("old-1", "old-2"):
            await coordinator.lease(ask(name, want=5))
        clock.advance(601)
        await coordinator.lease(ask("new", want=5))
        assert set(coordinator._last_seen) == set(coordinator._applied) == set(coordinator._held) == {"new"}

    run(loop, main)


def test_unlimited_dimensions_lease_none(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=None, tpm=6000)

    async def main() -> None:
        lease = await coordinator.lease(ask(want=10, need_tokens=10, want_tokens=10))
        assert (lease.requests, lease.tokens, lease.probe) == (None, 10, False)

    run(loop, main)


def test_a_report_alone_grants_nothing(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=60)

    async def main() -> None:
        lease = await coordinator.lease(ask(need=0, want=0, sent=3))
        assert (lease.requests, lease.tokens) == (0, 0)
        assert (await coordinator.snapshot()).requests_available == at(60)

    run(loop, main)


def test_headroom_keeps_the_bucket_below_a_full_minute(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=1200, tpm=60_000, headroom_s=1.0)

    async def main() -> None:
        snap = await coordinator.snapshot()
        assert (snap.requests_available, snap.tokens_available) == (at(1180), at(59_000))
        assert snap.limits == Limits(rpm=1200, tpm=60_000)
        await asyncio.sleep(600)
        assert (await coordinator.snapshot()).requests_available == at(1180)  # the refill stops there

    run(loop, main)


def test_restarted_coordinator_starts_empty(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=60, restarted=True)

    async def main() -> float:
        await coordinator.lease(ask(want=2))
        return clock() - START

    assert run(loop, main) == at(2.0)
    assert run(loop, coordinator.snapshot).restarted


# -- server feedback ------------------------------------------------------------------


def test_429_pauses_every_lease_for_the_retry_after(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=600)

    async def main() -> None:
        first = await coordinator.lease(ask("a"))
        watcher = asyncio.create_task(coordinator.watch("b", first.notice.epoch, first.notice.incarnation))
        await asyncio.sleep(1)
        assert not watcher.done()
        notice = await coordinator.report("a", [report(rate_limited=RateLimited(pause_s=3.0))])
        assert notice.paused_for_s == at(3.0)
        woken = await watcher
        assert woken.epoch > first.notice.epoch and woken.paused_for_s == at(3.0)
        assert clock() - START == at(1.0)  # the watch answered at once, not at its timeout
        await coordinator.lease(ask("b"))  # capacity is there, but the scope is paused
        assert clock() - START == at(4.0)
        snap = await coordinator.snapshot()
        assert snap.rate_limited == 1 and snap.paused_for_s == 0

    run(loop, main)


def test_a_shorter_429_does_not_shorten_the_pause_or_wake_watchers(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=600)

    async def main() -> None:
        notice = await coordinator.report("a", [report(rate_limited=RateLimited(pause_s=5.0))])
        again = await coordinator.report("a", [report(rate_limited=RateLimited(pause_s=1.0))])
        assert again.epoch == notice.epoch and again.paused_for_s == at(5.0)
        assert (await coordinator.snapshot()).rate_limited == 2

    run(loop, main)


def test_limits_are_learned_from_headers_when_none_given(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=None, tpm=None, policy=LeasePolicy(max_lease_s=2.0))
    headers = {
        "x-ratelimit-limit-requests": "1200",
        "x-ratelimit-limit-tokens": "60000",
        "x-ratelimit-remaining-requests": "1199",
        "x-ratelimit-remaining-tokens": "59000",
        "x-ratelimit-reset-requests": "50ms",
        "x-ratelimit-reset-tokens": "1s",
    }

    async def main() -> None:
        probe = await coordinator.lease(ask(want=50, need_tokens=100, want_tokens=5000))
        assert (probe.requests, probe.tokens, probe.probe) == (1, None, True)  # one request to learn from
        lease = await coordinator.lease(
            ask(want=50, need_tokens=100, want_tokens=5000, sent=1, observation=Observation.from_headers(headers))
        )
        assert (lease.requests, lease.tokens, lease.probe) == (40, 2000, False)
        assert lease.notice.limits == Limits(rpm=1200, tpm=60000)
        snap = await coordinator.snapshot()
        assert snap.given == Limits() and snap.learned == Limits(rpm=1200, tpm=60000)
        assert snap.tokens_available == at(59000 - 2000)  # the server's remaining, not a full bucket

    run(loop, main)


def test_a_server_without_limit_headers_leaves_the_scope_unlimited(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=None, tpm=None)

    async def main() -> None:
        assert (await coordinator.lease(ask(want=50))).requests == 1
        lease = await coordinator.lease(ask(want=50, sent=1, observation=Observation()))
        assert (lease.requests, lease.tokens, lease.probe) == (None, None, False)

    run(loop, main)


def test_given_and_learned_limits_the_lower_wins(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=100, tpm=None)

    async def main() -> None:
        await coordinator.report("a", [report(observation=Observation(limit_requests=60))])
        assert (await coordinator.snapshot()).limits == Limits(rpm=60)
        await coordinator.report("a", [report(observation=Observation(limit_requests=200, limit_tokens=5000))])
        snap = await coordinator.snapshot()
        assert snap.limits == Limits(rpm=100, tpm=5000) and snap.learned == Limits(rpm=200, tpm=5000)
        await coordinator.configure(Limits(rpm=50))
        assert (await coordinator.snapshot()).limits == Limits(rpm=50, tpm=5000)

    run(loop, main)


def test_bucket_tightens_when_the_server_has_less_left(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=600, tpm=None)

    async def main() -> None:
        await coordinator.lease(ask(want=20))
        await asyncio.sleep(1)  # 590 left by our books
        await coordinator.report("a", [report(observation=Observation(remaining_requests=595))])
        assert (await coordinator.snapshot()).requests_available == at(590)  # more than we think: ignored
        await coordinator.report("a", [report(observation=Observation(remaining_requests=100, age_s=1.0))])
        assert (await coordinator.snapshot()).requests_available == at(110)  # another client took some

    run(loop, main)


def test_insufficient_quota_stops_the_scope(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=60, policy=LeasePolicy(max_lease_s=60.0, burst_share=1.0))

    async def main() -> None:
        first = await coordinator.lease(ask("a", want=60))
        waiting = asyncio.create_task(coordinator.lease(ask("b", want=5)))
        watcher = asyncio.create_task(coordinator.watch("c", first.notice.epoch, first.notice.incarnation))
        await asyncio.sleep(1)
        notice = await coordinator.report("a", [report(rate_limited=RateLimited(pause_s=0, fatal=QUOTA))])
        assert notice.stopped == QUOTA
        stopped = await waiting
        assert (stopped.requests, stopped.tokens, stopped.notice.stopped) == (0, 0, QUOTA)
        assert (await watcher).stopped == QUOTA
        later = await coordinator.lease(ask("d", want=1))
        assert later.requests == 0 and later.notice.stopped == QUOTA
        snap = await coordinator.snapshot()
        assert snap.stopped == QUOTA and snap.rate_limited == 1

    run(loop, main)
    assert clock() - START == at(1.0)


def test_a_new_run_reopens_a_stopped_scope(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=60)

    async def main() -> None:
        await coordinator.report("a", [report(rate_limited=RateLimited(pause_s=0, fatal=QUOTA))])
        assert (await coordinator.lease(ask("a", want=1))).requests == 0
        await coordinator.reopen()  # the user added credit and ran again
        lease = await coordinator.lease(ask("b", want=1))
        assert lease.requests == 1 and lease.notice.stopped is None

    run(loop, main)


# -- watching -------------------------------------------------------------------------


def test_watch_answers_a_new_incarnation_at_once_and_otherwise_times_out(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock)

    async def main() -> None:
        fresh = await coordinator.watch("a", 0, None)  # never seen this coordinator
        assert clock() == START
        quiet = await coordinator.watch("a", fresh.epoch, fresh.incarnation)
        assert clock() - START == at(WATCH_TIMEOUT_S) and quiet.epoch == fresh.epoch
        restarted = await coordinator.watch("a", 99, "an-older-incarnation")
        assert restarted.incarnation == fresh.incarnation and clock() - START == at(WATCH_TIMEOUT_S)

    run(loop, main)
    snap = run(loop, coordinator.snapshot)
    assert snap.calls == 3


def test_limits_change_wakes_watchers(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator = make(clock, rpm=None)

    async def main() -> None:
        fresh = await coordinator.watch("a", 0, None)
        watcher = asyncio.create_task(coordinator.watch("a", fresh.epoch, fresh.incarnation))
        await asyncio.sleep(2)
        await coordinator.configure(Limits(rpm=300))
        notice = await watcher
        assert notice.limits == Limits(rpm=300) and clock() - START == at(2.0)

    run(loop, main)


def test_bad_policy_is_rejected() -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        LeasePolicy(horizon_s=5, ttl_s=5)
