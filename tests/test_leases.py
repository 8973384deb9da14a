"""The adapter-side lease client against a real Coordinator object, on virtual time.

``DirectLink`` stands in for the Ray handle: it calls the coordinator in the same loop,
counts calls, and can be killed (every call in flight and every later one fails, as with
a dead actor) and revived with another coordinator (as after Ray restarts it).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

import pydantic
import pytest

import tests.vtime
from actors.errors import ScopeStopped, TaskError
from actors.ratelimit.coordinated import CoordinatedLimiter
from actors.ratelimit.coordinator import Coordinator
from actors.ratelimit.limiter import Permit
from actors.ratelimit.limits import Limits
from actors.ratelimit.link import CoordinatorUnreachable
from actors.ratelimit.protocol import Lease, LeasePolicy, LeaseRequest, Notice, RateLimited, Report
from actors.ratelimit.specs import CoordinatedLimitSpec
from tests.vtime import START, VirtualClock, VirtualTimeLoop, at, clock, loop, run  # noqa: F401  (fixtures)

T = TypeVar("T")
QUOTA = TaskError(code="insufficient_quota", message="no credit left", status_code=429)



class DirectLink:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.calls: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight: Counter[str] = Counter()
        self._dead: asyncio.Future[None] | None = None
        self.down = False

    async def lease(self, request: LeaseRequest) -> Lease:
        return await self._call("lease", request.client, self.coordinator.lease(request))

    async def report(self, client: str, reports: list[Report]) -> Notice:
        return await self._call("report", client, self.coordinator.report(client, reports))

    async def watch(self, client: str, epoch: int, incarnation: str | None) -> Notice:
        return await self._call("watch", client, self.coordinator.watch(client, epoch, incarnation))

    def kill(self) -> None:
        self.down = True
        if self._dead is not None:
            self._dead.set_result(None)
            self._dead = None

    def revive(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.down = False

    async def _call(self, kind: str, client: str, call: Coroutine[Any, Any, T]) -> T:
        if self.down:
            call.close()
            raise CoordinatorUnreachable("the coordinator died")
        if self._dead is None:
            self._dead = asyncio.get_running_loop().create_future()
        dead = self._dead
        task = asyncio.ensure_future(call)
        key = f"{kind}:{client}"
        self.in_flight[key] += 1
        self.most_in_flight[key] = max(self.most_in_flight[key], self.in_flight[key])
        try:
            await asyncio.wait({task, dead}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()  # the caller gave up: so does the call, as ray.cancel does
            raise
        finally:
            self.in_flight[key] -= 1
        if not task.done():
            task.cancel()
            raise CoordinatorUnreachable("the coordinator died")
        self.calls[kind] += 1
        return task.result()


def coordinator(clock: VirtualClock, rpm: int | None = 600, tpm: int | None = None, *, policy: LeasePolicy | None = None, **kwargs: Any) -> Coordinator:
    """A coordinator whose bucket holds the full minute (no headroom, a server that allows a
    minute's burst), so the arithmetic stays plain."""
    policy = (policy or LeasePolicy()).model_copy(update={"headroom_s": 0.0, "initial_burst_s": 60.0})
    return Coordinator(scope="s", endpoint="e", model="m", limits=Limits(rpm=rpm, tpm=tpm), clock=clock, policy=policy, **kwargs)


def client(link: DirectLink, clock: VirtualClock, name: str = "a", adapters: int = 1, **kwargs: Any) -> CoordinatedLimiter:
    limits = kwargs.pop("limits", link.coordinator._given)
    return CoordinatedLimiter(link, client=name, adapters=adapters, limits=limits, clock=clock, **kwargs)


async def send_all(limiter: CoordinatedLimiter, clock: VirtualClock, count: int, *, tokens: int = 0, used: int | None = None, latency: float = 0.2) -> list[float]:
    """``count`` requests at once, each: acquire, 'send' (sleep), settle. Returns send times."""
    sent: list[float] = []

    async def one() -> None:
        permit = await limiter.acquire(tokens)
        sent.append(clock() - START)
        await asyncio.sleep(latency)
        limiter.settle(permit, tokens if used is None else used)

    await asyncio.gather(*(one() for _ in range(count)))
    return sent


async def close_all(*limiters: CoordinatedLimiter) -> None:
    for limiter in limiters:
        await limiter.close()


# -- sharing one limit ----------------------------------------------------------------


def test_clients_share_the_limit_with_few_calls(loop: VirtualTimeLoop, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tests.vtime, "MAX_JUMPS", 100_000)
    scope = coordinator(clock, rpm=600, restarted=True)  # 10 requests/s, starting empty
    link = DirectLink(scope)
    clients = [client(link, clock, f"c{i}", adapters=4) for i in range(4)]

    async def main() -> list[float]:
        times = await asyncio.gather(*(send_all(c, clock, 200) for c in clients))
        await close_all(*clients)
        return sorted(t for per_client in times for t in per_client)

    sent = run(loop, main)
    assert len(sent) == 800
    assert all(index + 1 <= 10 * t + 1e-6 for index, t in enumerate(sent)), "more sent than the limit allows"
    assert sent[-1] <= 80 * 1.05, "well below the limit"
    calls = sum(link.calls.values())
    assert calls / 800 < 0.2, link.calls
    assert max(count for key, count in link.most_in_flight.items() if key.startswith("lease")) == 1


def test_tokens_limit_with_reconcile_reusing_the_surplus(loop: VirtualTimeLoop, clock: VirtualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tests.vtime, "MAX_JUMPS", 100_000)
    scope = coordinator(clock, rpm=None, tpm=6000, restarted=True)  # 100 tokens/s
    link = DirectLink(scope)
    limiter = client(link, clock)

    async def main() -> list[float]:
        sent = await send_all(limiter, clock, 100, tokens=100, used=50)
        await limiter.close()
        return sent

    sent = run(loop, main)
    # Each request really costs 50: 100 requests need 5,000 tokens, i.e. 50 s, not 100 s.
    assert sent[-1] <= 50 * 1.1 + 1
    assert all((index + 1) * 50 <= 100 * t + 100 + 1e-6 for index, t in enumerate(sorted(sent)))
    snap = run(loop, scope.snapshot)
    assert (snap.requests_sent, snap.reserved_tokens, snap.used_tokens) == (100, 10_000, 5000)
    assert snap.held_tokens == 0


def test_settled_surplus_is_spent_locally_without_a_call(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    link = DirectLink(coordinator(clock, rpm=None, tpm=6000))
    limiter = client(link, clock)

    async def main() -> None:
        permit = await limiter.acquire(100)
        assert link.calls["lease"] == 1
        limiter.settle(permit, 40)
        await limiter.acquire(50)
        assert link.calls["lease"] == 1  # the 60 left over paid for it
        await limiter.acquire(50)
        assert link.calls["lease"] == 2
        await limiter.close()

    run(loop, main)


def test_expired_lease_goes_back_to_the_scope(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    policy = LeasePolicy(horizon_s=20, ttl_s=30, max_lease_s=60, burst_share=1.0)
    scope = coordinator(clock, rpm=60, restarted=True, policy=policy)  # 1/s, empty
    link = DirectLink(scope)
    limiter = client(link, clock, policy=policy)

    async def main() -> None:
        await send_all(limiter, clock, 10, latency=0.1)  # waits for all 10: granted at 10 s
        await asyncio.sleep(20)
        limiter.settle(await limiter.acquire(0), 0)  # at 30 s: needs 1, the recent rate wants 4
        assert limiter._pool.requests == 3  # 3 extra were spare: taken
        await asyncio.sleep(40)  # idle past the expiry (60 s): the 3 go back in a call of its own
        snap = await scope.snapshot()
        assert snap.held_requests == 0 and snap.leases_outstanding == 0 and snap.requests_sent == 11
        assert snap.requests_available == at(clock() - START - 11)  # the refill minus what was sent
        assert (link.calls["lease"], link.calls["report"]) == (2, 1)
        await limiter.close()

    run(loop, main)


def test_one_lease_call_at_a_time_and_waiters_in_order(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    link = DirectLink(coordinator(clock, rpm=60, restarted=True, policy=LeasePolicy(max_lease_s=60, burst_share=1.0)))
    limiter = client(link, clock)
    order: list[int] = []

    async def one(index: int) -> None:
        await limiter.acquire(0)
        order.append(index)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(20)))
        await limiter.close()

    run(loop, main)
    assert order == list(range(20))
    assert link.most_in_flight["lease:a"] == 1
    assert link.calls["lease"] == 1  # the whole queue in one lease
    assert clock() - START == at(20.0)


def test_cancelled_waiter_leaves_its_permit(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    link = DirectLink(coordinator(clock, rpm=60, restarted=True, policy=LeasePolicy(max_lease_s=60, burst_share=1.0)))
    limiter = client(link, clock)

    async def main() -> None:
        first = asyncio.create_task(limiter.acquire(0))
        second = asyncio.create_task(limiter.acquire(0))
        await asyncio.sleep(0.5)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        permit = await second
        assert isinstance(permit, Permit)
        assert clock() - START == at(2.0)  # lease of 2 (the queue) granted at 2 s
        await limiter.acquire(0)  # the cancelled one's share, no new lease
        assert link.calls["lease"] == 1
        await limiter.close()

    run(loop, main)


# -- pauses and stops -----------------------------------------------------------------


def test_a_429_anywhere_pauses_every_client(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    link = DirectLink(coordinator(clock, rpm=6000))
    a, b = client(link, clock, "a"), client(link, clock, "b")

    async def main() -> float:
        for limiter in (a, b):
            limiter.settle(await limiter.acquire(0), 0)  # both hold leases, both watch
        await asyncio.sleep(1)
        await a.rate_limited(RateLimited(pause_s=5.0))
        await asyncio.sleep(0.01)  # b's watch brings the news
        await b.acquire(0)  # b has capacity in hand, but waits out the pause
        waited = clock() - START
        await close_all(a, b)
        return waited

    assert run(loop, main) == at(6.0)
    assert link.calls["report"] >= 1


def test_insufficient_quota_fails_waiting_and_later_requests(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    link = DirectLink(coordinator(clock, rpm=60, restarted=True))
    a, b = client(link, clock, "a"), client(link, clock, "b")

    async def main() -> None:
        permit = await a.acquire(0)  # at 1 s
        waiting = [asyncio.create_task(b.acquire(0)) for _ in range(3)]
        await asyncio.sleep(0.5)
        a.settle(permit, 0)
        await a.rate_limited(RateLimited(pause_s=0, fatal=QUOTA))
        for task in waiting:
            with pytest.raises(ScopeStopped) as stopped:
                await task
            assert stopped.value.error == QUOTA
        with pytest.raises(ScopeStopped):
            await b.acquire(0)
        with pytest.raises(ScopeStopped):
            await a.acquire(0)
        await close_all(a, b)

    run(loop, main)
    assert clock() - START == at(1.5)
    assert run(loop, link.coordinator.snapshot).stopped == QUOTA


# -- the coordinator going away -------------------------------------------------------


def test_unreachable_coordinator_falls_back_to_a_share_then_reports_the_debt(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    policy = LeasePolicy(reconnect_s=1.0)
    link = DirectLink(coordinator(clock, rpm=600))  # 10/s; 4 adapters -> a share of 2.5/s
    limiter = client(link, clock, adapters=4, policy=policy)

    async def main() -> None:
        limiter.settle(await limiter.acquire(0), 0)  # one lease of 1, spent
        await asyncio.sleep(1)
        link.kill()
        await asyncio.sleep(0.01)
        assert limiter.in_fallback
        sent = [t - 1.0 for t in await send_all(limiter, clock, 10, latency=0.0)]
        assert sent == [at(0.4 * (i + 1)) for i in range(10)], "a share of 150 rpm, starting empty"
        restarted = coordinator(clock, rpm=600, restarted=True)  # Ray restarted it at 5 s
        link.revive(restarted)
        await asyncio.sleep(4)  # the watcher retries 1 s, 3 s and 7 s after the failure
        assert not limiter.in_fallback
        limiter.settle(await limiter.acquire(0), 0)
        snap = await restarted.snapshot()
        # Refilled since 5 s, minus the 10 sent on the fallback share, minus the new lease.
        assert snap.requests_available == at((clock() - START - 5) * 10 - 10 - snap.held_requests)
        assert snap.held_requests >= 1
        await limiter.close()

    run(loop, main)


def test_fallback_share_is_never_unlimited_when_a_limit_is_known(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    link = DirectLink(coordinator(clock, rpm=120))
    link.kill()  # unreachable from the start: the given limit is all the client knows
    limiter = client(link, clock, adapters=2, policy=LeasePolicy(reconnect_s=1000, ttl_s=2000, horizon_s=5))

    async def main() -> list[float]:
        sent = await send_all(limiter, clock, 5, latency=0.0)
        await limiter.close()
        return sent

    assert run(loop, main) == [at(1.0), at(2.0), at(3.0), at(4.0), at(5.0)]  # 60 rpm: half of 120


# -- learning limits ------------------------------------------------------------------


def test_probe_first_then_leases_sized_by_learned_limits(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    scope = coordinator(clock, rpm=None, tpm=None)
    link = DirectLink(scope)
    limiter = client(link, clock)
    headers = {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "599"}

    async def main() -> None:
        probe = await limiter.acquire(0)
        others = [asyncio.create_task(limiter.acquire(0)) for _ in range(5)]
        await asyncio.sleep(3)
        assert not any(task.done() for task in others), "nothing more before the probe's answer"
        limiter.observe(headers)
        limiter.settle(probe, 0)
        await asyncio.gather(*others)
        assert clock() - START == at(3.0)
        assert (await scope.snapshot()).learned == Limits(rpm=600)
        await limiter.close()

    run(loop, main)
    assert link.calls["lease"] == 2


def test_a_limit_learned_later_replaces_an_unlimited_pool(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    scope = coordinator(clock, rpm=None, tpm=None)
    link = DirectLink(scope)
    limiter = client(link, clock)

    async def main() -> float:
        probe = await limiter.acquire(0)
        limiter.observe({})  # a server that announces no limits
        limiter.settle(probe, 0)
        for _ in range(100):
            limiter.settle(await limiter.acquire(0), 0)
        assert link.calls["lease"] == 2  # unlimited: one lease covers everything
        await scope.configure(Limits(rpm=60))
        await asyncio.sleep(0.01)  # the watch brings the news
        started = clock()
        for _ in range(61):
            await limiter.acquire(0)
        waited = clock() - started
        await limiter.close()
        return waited

    assert run(loop, main) == at(1.0)  # the new bucket starts full (60), the 61st waits 1 s


def test_close_mid_lease_neither_loses_nor_doubles_a_report(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    scope = coordinator(clock, rpm=60, restarted=True)  # the second lease waits at the coordinator
    link = DirectLink(scope)
    limiter = client(link, clock)

    async def main() -> None:
        limiter.settle(await limiter.acquire(0), 0)
        waiting = asyncio.create_task(limiter.acquire(0))  # its lease carries the report of the first
        await asyncio.sleep(0.5)
        assert link.in_flight["lease:a"] == 1
        await limiter.close()  # cancels that lease call after the coordinator applied its report
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)

    run(loop, main)
    snap = run(loop, scope.snapshot)
    assert snap.requests_sent == 1
    assert snap.requests_available == at(clock() - START - 1)  # the cancelled lease took nothing


def test_settling_after_the_pool_expired_still_reaches_the_scope(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    scope = coordinator(clock, rpm=None, tpm=6000, restarted=True)  # 100 tokens/s, starting empty
    link = DirectLink(scope)
    limiter = client(link, clock)

    async def main() -> None:
        permit = await limiter.acquire(1000)  # granted at 10 s
        await asyncio.sleep(20)  # the lease expires (at 20 s) while the request is out
        limiter.settle(permit, 300)  # the server counted 300: 700 come back, though the pool is gone
        await limiter.close()

    run(loop, main)
    snap = run(loop, scope.snapshot)
    assert snap.tokens_available == at((clock() - START) * 100 - 1000 + 700)
    assert (snap.reserved_tokens, snap.used_tokens) == (1000, 300)


def test_a_coordinated_spec_wants_an_actor_handle() -> None:
    """Ray's own handle or the Ray Client's (recognised by name: its module needs grpc)."""
    with pytest.raises(pydantic.ValidationError, match="not a Ray actor handle"):
        CoordinatedLimitSpec(coordinator=object(), adapters=1)
