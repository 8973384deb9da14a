"""A 429 under a coordinator is a wait, not an attempt: the executor on virtual time
(tests/vtime.py), with a coordinated limiter and the sender replaced by a script of answers."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
import openai
import pytest

from actors.accounting.pricing import PriceTable
from actors.adapter import executor as executor_module
from actors.adapter.endpoints import Reply
from actors.adapter.executor import TaskExecutor
from actors.adapter.retry import RetryPolicy
from actors.adapter.task_table import TaskRecord
from actors.models import ChatTask, TaskStatus, Usage
from actors.ratelimit.coordinated import CoordinatedLimiter
from actors.ratelimit.limiter import Limiter, LocalLimiter, NoLimit
from actors.ratelimit.limits import Limits
from tests.test_leases import DirectLink, coordinator
from tests.vtime import START, VirtualClock, VirtualTimeLoop, at, clock, loop, run  # noqa: F401  (fixtures)

Answer = Exception | Reply
OK = Reply(text="fine", finish_reason="stop", usage=Usage(prompt_tokens=3, completion_tokens=1), model="gpt-4o-mini", request_id="r")


def _response(status: int, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.Response(status, headers=headers or {}, request=httpx2.Request("POST", "http://x/v1/chat/completions"))


def slow_down(retry_after_s: float = 2.0) -> openai.RateLimitError:
    response = _response(429, {"retry-after-ms": str(int(retry_after_s * 1000))})
    return openai.RateLimitError("429", response=response, body={"message": "Rate limit reached", "code": "rate_limit_exceeded"})


def too_large() -> openai.RateLimitError:
    body = {"message": "Request too large for tokens per min: Limit 100, Requested 500.", "code": "rate_limit_exceeded"}
    return openai.RateLimitError("429", response=_response(429), body=body)


def no_credit() -> openai.RateLimitError:
    return openai.RateLimitError("429", response=_response(429), body={"message": "quota", "code": "insufficient_quota"})


def server_error() -> openai.InternalServerError:
    return openai.InternalServerError("500", response=_response(500), body=None)


@pytest.fixture
def script(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Answer]]:
    """The answers the endpoint gives, in order; each send takes the next."""
    answers: list[Answer] = []

    async def send(connection: object, task: object, on_delta: object) -> Reply:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setitem(executor_module.SENDERS, "chat", send)
    yield answers
    assert not answers, "every scripted answer was used"


def coordinated(clock: VirtualClock) -> CoordinatedLimiter:
    return CoordinatedLimiter(DirectLink(coordinator(clock, rpm=600)), client="a", adapters=1, clock=clock)


def execute(loop: VirtualTimeLoop, limiter: Limiter, max_attempts: int = 2) -> tuple[TaskRecord, TaskExecutor]:
    retry = RetryPolicy(max_attempts=max_attempts, min_wait_s=0.5, max_wait_s=0.5)
    executor = TaskExecutor(None, limiter, retry, PriceTable.default(), max_in_flight=1)  # type: ignore[arg-type]
    record = TaskRecord(task=ChatTask(custom_id="t", messages=[{"role": "user", "content": "hi"}], max_tokens=4), deltas=None)

    async def main() -> None:
        await executor.execute(record)
        await limiter.close()

    run(loop, main)
    return record, executor


def test_429s_under_a_limiter_wait_out_the_pause_without_using_attempts(
    loop: VirtualTimeLoop, clock: VirtualClock, script: list[Answer]
) -> None:
    script += [slow_down(2.0)] * 6 + [OK]
    record, executor = execute(loop, coordinated(clock), max_attempts=2)
    assert record.result is not None and record.result.status is TaskStatus.COMPLETED
    assert record.result.attempts == 7  # every request sent is counted
    assert executor.stats.rate_limited == 6
    assert clock() - START == at(12.0)  # each 429 paused the limiter for its retry-after


@pytest.mark.parametrize("kind", ["none", "alone"])
def test_without_a_coordinator_429s_use_attempts_as_before(loop: VirtualTimeLoop, clock: VirtualClock, script: list[Answer], kind: str) -> None:
    script += [slow_down(2.0)] * 2
    record, _ = execute(loop, NoLimit() if kind == "none" else LocalLimiter(Limits(rpm=600), clock=clock), max_attempts=2)
    assert record.result is not None and record.result.status is TaskStatus.FAILED
    assert record.result.error is not None and record.result.error.code == "rate_limited"
    assert record.result.attempts == 2


def test_only_real_failures_count_towards_the_attempts(loop: VirtualTimeLoop, clock: VirtualClock, script: list[Answer]) -> None:
    script += [slow_down(), server_error(), slow_down(), slow_down(), server_error()]
    record, _ = execute(loop, coordinated(clock), max_attempts=2)
    assert record.result is not None and record.result.error is not None
    assert record.result.error.code == "server_error"  # the second 500 used the last attempt
    assert record.result.attempts == 5


def test_one_500_among_429s_leaves_an_attempt_to_succeed(loop: VirtualTimeLoop, clock: VirtualClock, script: list[Answer]) -> None:
    script += [slow_down(), server_error(), slow_down(), slow_down(), OK]
    record, _ = execute(loop, coordinated(clock), max_attempts=2)
    assert record.result is not None and record.result.ok and record.result.attempts == 5


@pytest.mark.parametrize(("answer", "code"), [(too_large, "request_too_large"), (no_credit, "insufficient_quota")])
def test_429s_no_wait_can_fix_fail_at_once(
    loop: VirtualTimeLoop, clock: VirtualClock, script: list[Answer], answer: object, code: str
) -> None:
    script.append(answer())  # type: ignore[operator]
    record, _ = execute(loop, coordinated(clock), max_attempts=5)
    assert record.result is not None and record.result.error is not None
    assert (record.result.error.code, record.result.attempts) == (code, 1)
