"""What an adapter asks before each HTTP attempt, and tells after it.

    async with limiter.attempt(task) as attempt:   # waits for capacity; may raise ScopeStopped
        reply = await send(...)
        attempt.succeeded(reply)                   # real usage and headers
    # leaving the block settles the reservation; a 429 is reported on the way out

Each attempt reserves ``tokens.reservation(task)`` (prompt + output allowance) and settles
it with what the provider counts against TPM: the prompt tokens it measured plus the
output allowance it reserved (OpenAI counts ``max_tokens``, not the tokens produced). A
failed attempt keeps its whole reservation: the server may have counted it.

Limiters: ``NoLimit`` (nothing to wait for), ``LocalLimiter`` (this adapter alone, also
the fallback while the coordinator is unreachable) and ``actors.leases.LeaseClient``
(capacity leased from the scope's coordinator). A ``LimitSpec`` is the picklable recipe
an adapter receives and builds its limiter from, inside its own event loop.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import openai
from pydantic import BaseModel, ConfigDict

from actors import tokens
from actors.bucket import Clock, RateBudget
from actors.endpoints import Reply
from actors.errors import ScopeStopped
from actors.limits import DEFAULT_PAUSE_S, Limits, Observation, RateLimited
from actors.models import AnyTask, Usage
from actors.retry import describe_error, is_fatal_quota, retry_after_s


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to send one request reserving ``tokens``; ``generation`` names the pool it came from."""

    tokens: int
    generation: int = 0


class Limiter(abc.ABC):
    """The adapter's side of rate limiting; one per adapter, bound to its event loop."""

    waits_out_rate_limits = False
    """A 429 pauses the whole scope this limiter governs with others, so the request waits
    and goes again without using one of its attempts (the coordinated limiter). A limiter
    blind to the other adapters cannot promise its wait ends, so 429s use attempts there."""

    @abc.abstractmethod
    async def acquire(self, tokens: int) -> Permit:
        """Wait until one request reserving ``tokens`` may be sent."""

    @abc.abstractmethod
    def settle(self, permit: Permit, used_tokens: int) -> None:
        """The attempt is over; ``used_tokens`` is what the provider counted for it."""

    @abc.abstractmethod
    async def rate_limited(self, event: RateLimited) -> None:
        """The server answered 429 (``event.fatal`` set for insufficient_quota)."""

    def observe(self, headers: Mapping[str, str]) -> None:
        """Headers of a response, for limits and remaining capacity; ignored by default."""

    async def close(self) -> None:
        """Give back what is held and stop background work."""

    def attempt(self, task: AnyTask) -> Attempt:
        return Attempt(self, task)


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


class NoLimit(Limiter):
    """No limit configured: attempts go straight out (the server's 429s are retried as usual)."""

    async def acquire(self, tokens: int) -> Permit:
        return Permit(tokens)

    def settle(self, permit: Permit, used_tokens: int) -> None:
        pass

    async def rate_limited(self, event: RateLimited) -> None:
        pass

    def attempt(self, task: AnyTask) -> Attempt:
        return _FreeAttempt(self, task)


class LocalLimiter(Limiter):
    """An adapter limited on its own: its own RPM/TPM budget and its own pause after a 429.

    This is what every per-process limiter does, and why eight of them at "the limit"
    send eight times the limit; rayfan uses it alone only when asked (benchmarks, tests)
    and as the coordinator's fallback, with a share of the limit (``full=False``).
    """

    def __init__(self, limits: Limits, *, clock: Clock = time.monotonic, full: bool = True) -> None:
        self._clock = clock
        self._budget = RateBudget(rpm=limits.rpm, tpm=limits.tpm, clock=clock, full=full)

    async def acquire(self, tokens: int) -> Permit:
        await self._budget.acquire(1, tokens)
        return Permit(tokens)

    def settle(self, permit: Permit, used_tokens: int) -> None:
        self._budget.reconcile(permit.tokens, used_tokens)

    async def rate_limited(self, event: RateLimited) -> None:
        fatal = event.fatal
        if fatal is not None:
            self._budget.shut(lambda: ScopeStopped(fatal))
        else:
            self._budget.pause_until(self._clock() + event.pause_s)


class LimitSpec(Protocol):
    """A picklable recipe for a limiter, built inside the adapter that uses it."""

    def build(self, client: str) -> Limiter: ...


class LocalLimit(BaseModel):
    """Limit each adapter on its own to ``limits`` (no coordinator)."""

    model_config = ConfigDict(frozen=True)

    limits: Limits

    def build(self, client: str) -> Limiter:
        return LocalLimiter(self.limits)


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
