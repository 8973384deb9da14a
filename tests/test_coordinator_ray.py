"""The coordinator as a real Ray actor, with adapter actors and the fake server enforcing limits.

The main scene: eight adapters share one coordinator while the server enforces RPM and
TPM per key and answers 429 when they are exceeded. 2,000 requests at 1,200 RPM: the
first 1,200 fit the server's full bucket, the rest take about 40 s at the limit.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable

import pytest
import ray
from ray.exceptions import ActorUnavailableError
from ray.util.state import list_actors

from actors import ChatTask, OpenAIAdapter, RetryPolicy
from actors.accounting import tokens
from actors.adapter.settings import EndpointSettings
from actors.ratelimit.coordinator import NAMESPACE, coordinator_for, scope_name
from actors.ratelimit.limits import Limits
from actors.ratelimit.protocol import CoordinatorSnapshot
from actors.ratelimit.specs import CoordinatedLimitSpec, LocalLimitSpec
from drivers.fanout import fan_out
from drivers.mock import MockServer
from tests.conftest import ray_list_actors_cli

pytestmark = pytest.mark.usefixtures("ray_session")

MODEL = "gpt-4o-mini"
SECRET = "sk-proj-RECOGNIZABLE-coordinator-7d1f3e9a"


def tasks(count: int, prefix: str = "t") -> list[ChatTask]:
    return [
        ChatTask(custom_id=f"{prefix}{i}", messages=[{"role": "user", "content": f"prompt number {i} about rate limits"}], max_tokens=10)
        for i in range(count)
    ]


def snapshot_once(coordinator: ray.actor.ActorHandle, condition: Callable[[CoordinatorSnapshot], bool], timeout_s: float = 60.0) -> CoordinatorSnapshot:
    """The coordinator's first snapshot that meets ``condition``: a restarting coordinator
    does not answer, and adapters reconnect to it on their own backoff."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            snap: CoordinatorSnapshot = ray.get(coordinator.snapshot.remote())
            if condition(snap):
                return snap
        except ActorUnavailableError:
            pass
        assert time.monotonic() < deadline, "the coordinator never got there"
        time.sleep(0.1)


def outcomes(server: MockServer) -> Counter[str]:
    return Counter(entry.outcome for entry in server.requests())


def start(count: int, server: MockServer, key: str, limit: object, retry: RetryPolicy | None = None) -> list[ray.actor.ActorHandle]:
    return [
        OpenAIAdapter.remote(endpoint=EndpointSettings(base_url=server.base_url, api_key=key), model=MODEL, name=f"limited-{i}", limit=limit, retry=retry)
        for i in range(count)
    ]


def test_eight_adapters_share_one_coordinator_without_tripping_the_server(server: MockServer) -> None:
    server.configure(rpm_limit=1200, tpm_limit=24_000, latency_s=0.05)
    key = "sk-test-shared-scope"
    limits = Limits(rpm=1200, tpm=24_000)
    coordinator = coordinator_for(server.base_url, key, MODEL, limits=limits)
    adapters = start(8, server, key, CoordinatedLimitSpec(coordinator=coordinator, adapters=8, limits=limits))
    try:
        sent = tasks(2000)
        results = [result for _, result in fan_out(sent, adapters, max_in_flight=512)]
        ray.get([adapter.close.remote() for adapter in adapters])  # flushes their last reports
        snap: CoordinatorSnapshot = ray.get(coordinator.snapshot.remote())
    finally:
        for actor in [*adapters, coordinator]:
            ray.kill(actor)
    assert len(results) == 2000 and all(result.ok for result in results)
    seen = outcomes(server)
    assert seen["ok"] == 2000
    assert seen["error:429"] <= 20, seen  # at most 1% rejected
    assert snap.learned == limits and snap.limits == limits
    assert snap.requests_sent == sum(result.attempts for result in results)
    reserved = {task.custom_id: tokens.reservation(task) for task in sent}
    assert snap.used_tokens == sum(  # as the server counts; a rejected attempt keeps its reservation
        result.usage.prompt_tokens + 10 + (result.attempts - 1) * reserved[result.custom_id] for result in results
    )
    assert snap.held_requests == 0 and snap.rate_limited == seen["error:429"]
    assert snap.calls / snap.requests_sent < 0.2, snap


@pytest.mark.parametrize("headers_show", ["the window", "a minute"])
def test_a_server_metering_per_second_fails_nothing_and_the_scope_learns_its_window(server: MockServer, headers_show: str) -> None:
    """2,400 RPM enforced per second (40 at once, 40 a second), limits learned, one attempt
    per request: a 429 must be waited out, never fail. When the headers show the window, the
    scope keeps to it from the start; when they show a minute (the server hides its
    metering), the minute's burst it then tries is answered 429 and the window is halved."""
    server.configure(rpm_limit=2400, rate_window_s=1.0, headers_show_minute=headers_show == "a minute", latency_s=0.05)
    key = f"sk-test-per-second-{headers_show.replace(' ', '-')}"
    coordinator = coordinator_for(server.base_url, key, MODEL)
    adapters = start(4, server, key, CoordinatedLimitSpec(coordinator=coordinator, adapters=4), retry=RetryPolicy(max_attempts=1))
    try:
        results = [result for _, result in fan_out(tasks(400, "ps"), adapters, max_in_flight=128)]
        ray.get([adapter.close.remote() for adapter in adapters])
        snap: CoordinatorSnapshot = ray.get(coordinator.snapshot.remote())
    finally:
        for actor in [*adapters, coordinator]:
            ray.kill(actor)
    assert [result.error for result in results if not result.ok] == []
    seen = outcomes(server)
    assert seen["ok"] == 400 and snap.learned == Limits(rpm=2400)
    if headers_show == "the window":
        assert snap.burst_s == pytest.approx(1.0, rel=0.1)
        assert seen["error:429"] <= 8, seen  # at most 2%, from arrival jitter on a loaded machine
    else:
        assert seen["error:429"] >= 1 and snap.burst_s <= 1.0, (seen, snap)


def test_without_the_coordinator_each_adapter_alone_trips_the_server(server: MockServer) -> None:
    """The per-process limiter everyone else ships: four adapters at "the limit" send four times it."""
    server.configure(rpm_limit=120, latency_s=0.02)
    once = RetryPolicy(max_attempts=1)
    adapters = start(4, server, "sk-test-alone", LocalLimitSpec(limits=Limits(rpm=120)), retry=once)
    try:
        results = [result for _, result in fan_out(tasks(300, "alone"), adapters, max_in_flight=300)]
    finally:
        for actor in adapters:
            ray.kill(actor)
    rejected = [result for result in results if result.error and result.error.code == "rate_limited"]
    assert len(rejected) >= 100, outcomes(server)  # 300 offered at once, 120 fit


def test_coordinator_restart_falls_back_then_resumes(server: MockServer) -> None:
    server.configure(rpm_limit=6000, latency_s=0.02)
    key = "sk-test-restart"
    limits = Limits(rpm=6000)
    coordinator = coordinator_for(server.base_url, key, MODEL, limits=limits)
    adapters = start(2, server, key, CoordinatedLimitSpec(coordinator=coordinator, adapters=2, limits=limits))
    try:
        first = [result for _, result in fan_out(tasks(100, "before"), adapters, max_in_flight=50)]
        ray.kill(coordinator, no_restart=False)  # Ray restarts it (max_restarts=-1)
        second = [result for _, result in fan_out(tasks(100, "during"), adapters, max_in_flight=50)]
        found = ray.get_actor(scope_name(server.base_url, key, MODEL), namespace=NAMESPACE)
        third = [result for _, result in fan_out(tasks(100, "after"), adapters, max_in_flight=50)]
        snap = snapshot_once(found, lambda snap: snap.calls > 0 and snap.requests_sent > 0)  # the adapters found it again
    finally:
        for actor in [*adapters, coordinator]:
            ray.kill(actor)
    assert all(result.ok for result in [*first, *second, *third])
    assert snap.restarted and snap.limits == limits  # given limits survive the restart
    assert outcomes(server)["error:429"] == 0


def test_the_key_never_shows_in_rays_actor_listing(server: MockServer) -> None:
    coordinator = coordinator_for(server.base_url, SECRET, MODEL, limits=Limits(rpm=600))
    adapters = start(1, server, SECRET, CoordinatedLimitSpec(coordinator=coordinator, adapters=1))
    try:
        results = [result for _, result in fan_out(tasks(5, "secret"), adapters, max_in_flight=5)]
        snap: CoordinatorSnapshot = ray.get(coordinator.snapshot.remote())
        address = ray.get_runtime_context().gcs_address  # other Ray instances may run on this machine
        listing = "\n".join([str(list_actors(address=address, detail=True, limit=10_000)), ray_list_actors_cli(snap.scope)])
    finally:
        for actor in [*adapters, coordinator]:
            ray.kill(actor)
    assert all(result.ok for result in results)
    assert any(entry.authorization == f"Bearer {SECRET}" for entry in server.requests())
    haystack = "\n".join([listing, snap.model_dump_json(), json.dumps([r.model_dump(mode="json") for r in results])])
    assert "RECOGNIZABLE" not in haystack and "Bearer" not in haystack
