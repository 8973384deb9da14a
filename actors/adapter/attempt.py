"""One HTTP attempt under the adapter's limiter, as an async context manager.

    async with attempt_under(limiter, task) as attempt:   # waits for capacity; may raise ScopeStopped
        reply = await send(...)
        attempt.succeeded(reply)                          # real usage and headers
    # leaving the block settles the reservation; a 429 is reported on the way out

Each attempt reserves ``tokens.reservation(task)`` (prompt + output allowance) and settles
it with what the provider counts against TPM: the prompt tokens it measured plus the
output allowance it reserved (OpenAI counts ``max_tokens``, not the tokens produced). A
failed attempt keeps its whole reservation: the server may have counted it. This is where
requests and SDK errors meet rate limiting, which knows neither.
"""

from __future__ import annotations

from types import TracebackType

import openai

from actors.accounting import tokens
from actors.adapter.endpoints import Reply
from actors.adapter.retry import describe_error, is_fatal_quota, retry_after_s
from actors.models import AnyTask, Usage
from actors.ratelimit.headers import DEFAULT_PAUSE_S, Observation
from actors.ratelimit.limiter import Limiter, Permit
from actors.ratelimit.protocol import RateLimited


def attempt_under(limiter: Limiter, task: AnyTask) -> Attempt:
    """The attempt for ``task``: one that counts nothing when there is no limit."""
    return _FreeAttempt(limiter, task) if limiter.counts_nothing else Attempt(limiter, task)


class Attempt:
    """One HTTP attempt under a limiter, as an async context manager (see the module doc)."""

    __slots__ = ("_limiter", "_task", "_permit", "_used")

    def __init__(self, limiter: Limiter, task: AnyTask) -> None:
        self._limiter = limiter
        self._task = task
        self._permit = Permit(0)
        self._used: int | None = None

    async def __aenter__(self) -> Attempt:
        self._permit = await self._limiter.acquire(tokens.reservation(self._task))
        return self

    def succeeded(self, reply: Reply) -> None:
        self._used = charged_tokens(self._task, reply.usage, self._permit.tokens)
        self._limiter.observe(reply.headers)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._limiter.settle(self._permit, self._permit.tokens if self._used is None else self._used)
        if isinstance(exc, openai.RateLimitError):
            self._limiter.observe(exc.response.headers)
            await self._limiter.rate_limited(rate_limit_event(exc, self._permit.tokens))


class _FreeAttempt(Attempt):
    """NoLimit's attempt: no reservation to count, nothing to report."""

    async def __aenter__(self) -> Attempt:
        return self

    def succeeded(self, reply: Reply) -> None:
        pass

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass


def charged_tokens(task: AnyTask, usage: Usage, reserved: int) -> int:
    """Tokens the provider counts against TPM: measured prompt + the output allowance.

    Without a reported prompt count (e.g. a stream without usage) the reservation stands.
    """
    if usage.prompt_tokens <= 0:
        return reserved
    cap = task.output_cap
    return usage.prompt_tokens + (usage.completion_tokens if cap is None else cap)


def rate_limit_event(error: openai.RateLimitError, tokens: int) -> RateLimited:
    """The pause a 429 asks for: retry-after, else the reset of what ran out, else a default;
    and whether its headers said the request of ``tokens`` fitted."""
    if is_fatal_quota(error):
        return RateLimited(pause_s=0.0, fatal=describe_error(error))
    observation = Observation.from_headers(error.response.headers)
    pause = retry_after_s(error)
    if pause is None:
        pause = observation.exhausted_reset_s()
    return RateLimited(pause_s=DEFAULT_PAUSE_S if pause is None else pause, despite_room=observation.has_room_for(tokens))
