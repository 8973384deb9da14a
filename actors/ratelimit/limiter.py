"""The adapter's side of rate limiting: what it asks before each HTTP attempt, and tells after.

An adapter acquires a ``Permit`` for one request and its token reservation, settles it
with what the provider counted, and reports 429s and response headers. Limiters:
``NoLimit`` (nothing to wait for), ``LocalLimiter`` (this adapter alone; also the shape of
the fallback while the coordinator is unreachable) and ``CoordinatedLimiter``
(``coordinated.py``: capacity leased from the scope's coordinator). Nothing here knows
what a request is: the adapter wraps each attempt (``actors.adapter.attempt``).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping
from dataclasses import dataclass

from actors.errors import ScopeStopped
from actors.ratelimit.bucket import Clock
from actors.ratelimit.budget import RateBudget
from actors.ratelimit.limits import Limits
from actors.ratelimit.protocol import RateLimited


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to send one request reserving ``tokens``; ``generation`` names the pool it came from."""

    tokens: int
    generation: int = 0


class Limiter(abc.ABC):
    """The adapter's side of rate limiting; one per adapter, bound to its event loop."""

    counts_nothing = False
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


class NoLimit(Limiter):
    """No limit configured: attempts go straight out (the server's 429s are retried as usual)."""

    counts_nothing = True
    """Nothing to reserve or report: the adapter skips the bookkeeping around each attempt."""

    async def acquire(self, tokens: int) -> Permit:
        return Permit(tokens)

    def settle(self, permit: Permit, used_tokens: int) -> None:
        pass

    async def rate_limited(self, event: RateLimited) -> None:
        pass


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
