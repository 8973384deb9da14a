"""A coordinator nobody calls goes away; whoever needs its scope next creates it again.

The timing on virtual time (tests/vtime.py), then the real thing: a coordinator actor that
exits while a run still holds its handle, and the run's adapter finding the next one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import ray
from ray.exceptions import RayActorError

from actors import ChatTask, OpenAIAdapter
from actors.adapter.settings import EndpointSettings
from actors.ratelimit.coordinator import NAMESPACE, Coordinator, LimitScope, join_scope, new_run
from actors.ratelimit.limits import Limits
from actors.ratelimit.protocol import CoordinatorSnapshot, LeasePolicy, LeaseRequest, RateLimited, Report
from actors.ratelimit.specs import CoordinatedLimitSpec
from drivers.fanout import fan_out
from drivers.mock import MockServer
from tests.vtime import START, VirtualClock, VirtualTimeLoop, at, clock, loop, run  # noqa: F401  (fixtures)

MODEL = "gpt-4o-mini"
IDLE_S = 10.0


def make(clock: VirtualClock) -> tuple[Coordinator, list[float]]:
    """A coordinator that expires after ``IDLE_S`` of silence, and the times it did."""
    expired: list[float] = []
    coordinator = Coordinator(
        scope="s",
        endpoint="http://x/v1",
        model="m",
        limits=Limits(rpm=600),
        clock=clock,
        policy=LeasePolicy(idle_expiry_s=IDLE_S),
        on_idle=lambda: expired.append(clock()),
    )
    return coordinator, expired


def test_it_expires_once_nobody_has_called_for_the_idle_time(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    coordinator, expired = make(clock)

    async def main() -> CoordinatorSnapshot:
        await coordinator.report("a", [])
        await asyncio.sleep(6)
        await coordinator.report("a", [])  # the silence starts again
        await asyncio.sleep(6)
        snap = await coordinator.snapshot()  # looking is not using: status must not keep it alive
        await asyncio.sleep(60)
        return snap

    snap = run(loop, main)
    assert expired == [at(START + 6 + IDLE_S)]
    assert snap.idle_s == at(6.0) and snap.idle_expiry_s == IDLE_S


def test_a_parked_watch_or_a_waiting_lease_keeps_it_alive(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    """Both outlast the idle time (a watch parks 30 s, a lease waits out a pause): what
    counts is when the last call ends."""
    coordinator, expired = make(clock)
    ended: list[float] = []

    async def main() -> None:
        await coordinator.report("a", [])  # the idle timer runs from here
        notice = await coordinator.watch("a", 0, None)  # a new incarnation: answered at once
        while clock() < START + 65:
            notice = await coordinator.watch("a", notice.epoch, notice.incarnation)
        ended.append(clock())
        assert expired == []
        await coordinator.report("a", [Report(seq=0, rate_limited=RateLimited(pause_s=45.0))])
        lease = await coordinator.lease(LeaseRequest(client="a", need_requests=1, want_requests=1))
        assert lease.requests == 1
        ended.append(clock())
        await asyncio.sleep(60)

    run(loop, main)
    assert ended == [at(START + 90), at(START + 135)]  # three 30 s watches, then the 45 s pause
    assert expired == [at(START + 135 + IDLE_S)]


def _until(condition: Callable[[], bool], what: str, within_s: float = 120.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _running(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return True


@pytest.mark.usefixtures("ray_session")
def test_an_expired_coordinator_is_created_again_by_the_next_caller(server: MockServer) -> None:
    """``join_scope`` after an expiry gets a fresh coordinator that knows no other run."""
    scope = LimitScope.of(server.base_url, "sk-test-expiry-join", MODEL, limits=Limits(rpm=600), policy=LeasePolicy(idle_expiry_s=0.5))
    first = join_scope(scope, new_run())
    try:
        _until(lambda: not _running(scope.name), "the idle coordinator never exited")
        with pytest.raises(RayActorError):
            ray.get(first.snapshot.remote(), timeout=30)
        # the next one lives longer, so that no pause of a loaded machine lets it expire before it is looked at
        second = join_scope(scope.model_copy(update={"policy": LeasePolicy(idle_expiry_s=600)}), new_run())
        snap: CoordinatorSnapshot = ray.get(second.snapshot.remote())
    finally:
        for name in [scope.name] if _running(scope.name) else []:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE))
    assert snap.given == Limits(rpm=600) and snap.runs == 1 and not snap.restarted


@pytest.mark.usefixtures("ray_session")
def test_a_run_whose_coordinator_expired_finds_the_next_one(server: MockServer) -> None:
    """The race the expiry opens: a run holds the handle, its adapter stays idle past the
    idle time (so the coordinator exits), then sends. Its first calls fail, it keeps to its
    fallback share, and its next call looks the scope up by name and creates it again."""
    server.configure(rpm_limit=6000)
    key = "sk-test-expiry-race"
    scope = LimitScope.of(server.base_url, key, MODEL, limits=Limits(rpm=6000), policy=LeasePolicy(idle_expiry_s=1.0))
    limit = CoordinatedLimitSpec.shared(scope, adapters=1)
    adapter = OpenAIAdapter.remote(endpoint=EndpointSettings(base_url=server.base_url, api_key=key), model=MODEL, limit=limit)
    try:
        ray.get(adapter.status.remote())  # started, and never called the coordinator
        _until(lambda: not _running(scope.name), "the idle coordinator never exited")
        tasks = [ChatTask(custom_id=f"x{i}", messages=[{"role": "user", "content": f"prompt {i}"}], max_tokens=5) for i in range(20)]
        results = [result for _, result in fan_out(tasks, [adapter], max_in_flight=10)]
        _until(lambda: _running(scope.name), "nobody created the coordinator again")
        again = ray.get_actor(scope.name, namespace=NAMESPACE)
        snap: CoordinatorSnapshot | None = None

        def heard_from_the_adapter() -> bool:
            nonlocal snap
            snap = ray.get(again.snapshot.remote())
            return snap.clients == 1 and snap.calls > 0

        _until(heard_from_the_adapter, "the adapter never reached the new coordinator")
    finally:
        ray.kill(adapter)
        if _running(scope.name):
            ray.kill(ray.get_actor(scope.name, namespace=NAMESPACE))
    assert [result.error for result in results if not result.ok] == []
    assert again._actor_id != limit.coordinator._actor_id  # a new actor, not a restart of the old one
    assert snap is not None and snap.limits == Limits(rpm=6000) and not snap.restarted
    assert all(entry.outcome == "ok" for entry in server.requests())
