"""Limiters in the adapter, over real HTTP to the fake server (no Ray), plus header reading."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx2
import openai
import pytest

from actors import Adapter, ChatTask, EmbeddingTask, RetryPolicy, Usage
from actors.adapter.attempt import charged_tokens, rate_limit_event
from actors.adapter.settings import EndpointSettings
from actors.errors import TaskError
from actors.ratelimit.coordinated import CoordinatedLimiter
from actors.ratelimit.coordinator import Coordinator
from actors.ratelimit.headers import DEFAULT_PAUSE_S, Observation, parse_duration
from actors.ratelimit.limiter import Limiter, LocalLimiter
from actors.ratelimit.limits import Limits
from actors.ratelimit.protocol import RateLimited
from actors.ratelimit.specs import LocalLimitSpec
from drivers.mock import MockServer
from tests.conftest import TEST_KEY, run
from tests.test_leases import DirectLink
from tests.vtime import START, VirtualClock, VirtualTimeLoop, at, clock, loop  # noqa: F401  (fixtures)
from tests.vtime import run as run_virtual

FAST_RETRIES = RetryPolicy(max_attempts=3, min_wait_s=0.01, max_wait_s=0.05)
QUOTA_PROMPT = "pay up [[mock status=429 code=insufficient_quota]]"


def chat(custom_id: str, prompt: str, max_tokens: int = 5) -> ChatTask:
    return ChatTask(custom_id=custom_id, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens)


def rate_limit_error(headers: dict[str, str], code: str = "rate_limit_exceeded") -> openai.RateLimitError:
    response = httpx2.Response(429, headers=headers, request=httpx2.Request("POST", "http://x/v1/chat/completions"))
    return openai.RateLimitError("429", response=response, body={"message": "slow down", "code": code})


# -- reading what the server says -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("120ms", 0.12), ("1s", 1.0), ("7.66s", 7.66), ("6m0s", 360.0), ("1h2m3.5s", 3723.5), ("0s", 0.0), ("500us", 5e-4)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "1x", "5", "1s garbage", "-1s"])
def test_parse_duration_rejects_what_it_cannot_read(text: str | None) -> None:
    assert parse_duration(text) is None


def test_observation_from_openai_headers() -> None:
    observation = Observation.from_headers(
        {
            "x-ratelimit-limit-requests": "5000",
            "x-ratelimit-limit-tokens": "not-a-number",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-remaining-tokens": "159000",
            "x-ratelimit-reset-requests": "12ms",
            "x-ratelimit-reset-tokens": "6m0s",
        },
        age_s=0.5,
    )
    assert observation.limits == Limits(rpm=5000, tpm=None)
    assert (observation.remaining_requests, observation.remaining_tokens) == (0, 159000)
    assert observation.exhausted_reset_s() == pytest.approx(0.012)  # only requests ran out
    assert observation.age_s == 0.5
    assert Observation.from_headers({}).limits == Limits()


def test_429_pause_prefers_retry_after_then_the_reset_of_what_ran_out() -> None:
    assert rate_limit_event(rate_limit_error({"retry-after-ms": "1500", "retry-after": "2"}), 10).pause_s == 1.5
    assert rate_limit_event(rate_limit_error({"retry-after": "3"}), 10).pause_s == 3.0
    exhausted = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "2.5s"}
    assert rate_limit_event(rate_limit_error(exhausted), 10).pause_s == 2.5
    assert rate_limit_event(rate_limit_error({}), 10).pause_s == DEFAULT_PAUSE_S
    fatal = rate_limit_event(rate_limit_error({}, code="insufficient_quota"), 10)
    assert fatal.fatal is not None and fatal.fatal.code == "insufficient_quota"


def test_charged_tokens_is_the_prompt_plus_the_output_allowance() -> None:
    task = chat("a", "hello", max_tokens=50)
    assert charged_tokens(task, Usage(prompt_tokens=12, completion_tokens=3), reserved=70) == 62
    uncapped = ChatTask(custom_id="b", messages=[{"role": "user", "content": "hi"}])
    assert charged_tokens(uncapped, Usage(prompt_tokens=12, completion_tokens=3), reserved=2000) == 15
    embedding = EmbeddingTask(custom_id="e", input="some text")
    assert charged_tokens(embedding, Usage(prompt_tokens=3), reserved=9) == 3
    assert charged_tokens(task, Usage(), reserved=70) == 70  # no usage reported: the estimate stands


# -- the local limiter ----------------------------------------------------------------


def test_local_limiter_pauses_after_a_429(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    limiter = LocalLimiter(Limits(rpm=600), clock=clock)

    async def main() -> float:
        await limiter.acquire(0)
        await limiter.rate_limited(RateLimited(pause_s=4.0))
        await limiter.acquire(0)
        return clock() - START

    assert run_virtual(loop, main) == at(4.0)


def test_local_limiter_stops_on_insufficient_quota(loop: VirtualTimeLoop, clock: VirtualClock) -> None:
    limiter = LocalLimiter(Limits(rpm=60), clock=clock, full=False)
    quota = TaskError(code="insufficient_quota", message="none left")

    async def main() -> None:
        waiting = asyncio.create_task(limiter.acquire(0))
        await asyncio.sleep(0.5)
        await limiter.rate_limited(RateLimited(pause_s=0, fatal=quota))
        with pytest.raises(Exception, match="insufficient_quota"):
            await waiting

    run_virtual(loop, main)
    assert clock() - START == at(0.5)


# -- in the adapter, over HTTP ---------------------------------------------------------


@dataclass(frozen=True)
class DirectLimit:
    """A LimitSpec for tests: a lease client wired straight to a Coordinator object."""

    coordinator: Coordinator

    def build(self, client: str) -> Limiter:
        return CoordinatedLimiter(DirectLink(self.coordinator), client=client, adapters=1)


def test_adapter_learns_limits_and_reports_usage(server: MockServer) -> None:
    server.configure(rpm_limit=600, tpm_limit=100_000)

    async def body() -> None:
        scope = Coordinator(scope="s", endpoint=server.base_url, model="m")  # no limits given
        adapter = Adapter(endpoint=EndpointSettings(base_url=server.base_url, api_key=TEST_KEY), retry=FAST_RETRIES, limit=DirectLimit(scope))
        results = await asyncio.gather(*(adapter.run(chat(f"r{i}", f"prompt number {i} here")) for i in range(40)))
        await adapter.close()
        assert all(result.ok for result in results)
        snap = await scope.snapshot()
        assert snap.learned == Limits(rpm=600, tpm=100_000) and snap.limits == snap.learned
        assert snap.requests_sent == 40
        # What the server charged: its prompt count plus max_tokens, for every request.
        assert snap.used_tokens == sum(result.usage.prompt_tokens + 5 for result in results)
        assert snap.reserved_tokens >= snap.used_tokens  # tiktoken + framing reserves more than the mock counts
        assert snap.held_requests == 0 and snap.rate_limited == 0

    run(body())
    assert not [entry for entry in server.requests() if entry.outcome != "ok"]


def test_adapter_reports_429_and_the_scope_pauses(server: MockServer) -> None:
    async def body() -> None:
        scope = Coordinator(scope="s", endpoint=server.base_url, model="m", limits=Limits(rpm=6000))
        adapter = Adapter(endpoint=EndpointSettings(base_url=server.base_url, api_key=TEST_KEY), retry=FAST_RETRIES, limit=DirectLimit(scope))
        result = await adapter.run(chat("busy", "busy [[mock status=429 retry_after_ms=300 times=1]]"))
        await adapter.close()
        assert result.ok and result.attempts == 2
        snap = await scope.snapshot()
        assert snap.rate_limited == 1 and snap.requests_sent == 2
        stats = await adapter.stats()
        assert stats.rate_limited == 1

    run(body())
    first, second = server.requests()
    assert second.received_at - first.received_at >= 0.3  # the retry waited for the server's retry-after


def test_insufficient_quota_fails_queued_tasks_without_sending_them(server: MockServer) -> None:
    async def body() -> None:
        scope = Coordinator(scope="s", endpoint=server.base_url, model="m", limits=Limits(rpm=1))
        adapter = Adapter(endpoint=EndpointSettings(base_url=server.base_url, api_key=TEST_KEY), retry=FAST_RETRIES, limit=DirectLimit(scope))
        fatal = await adapter.submit_task(chat("fatal", QUOTA_PROMPT))
        queued = [await adapter.submit_task(chat(f"q{i}", "anything")) for i in range(5)]
        results = [await adapter.get_result(task_id) for task_id in [fatal, *queued]]
        await adapter.close()
        assert [result.error.code if result.error else None for result in results] == ["insufficient_quota"] * 6
        assert all(result.attempts == 0 for result in results[1:])  # never sent

    run(body())
    assert len(server.requests()) == 1


def test_local_limit_spec_builds_a_local_limiter(server: MockServer) -> None:
    async def body() -> None:
        adapter = Adapter(endpoint=EndpointSettings(base_url=server.base_url, api_key=TEST_KEY), limit=LocalLimitSpec(limits=Limits(rpm=1)))
        fatal = await adapter.submit_task(chat("fatal", QUOTA_PROMPT))
        waiting = await adapter.submit_task(chat("waiting", "anything"))
        results = [await adapter.get_result(fatal), await adapter.get_result(waiting)]
        await adapter.close()
        assert [result.error.code if result.error else None for result in results] == ["insufficient_quota"] * 2

    run(body())
    assert len(server.requests()) == 1
