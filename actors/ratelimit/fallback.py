"""The share a coordinated limiter keeps to while its coordinator cannot be reached.

The scope's limit divided by the adapters, starting empty (what was spent just before is
unknown), so a lost coordinator can make the scope slower but never faster than its limit.
What is spent from it is owed to the scope and reported as debt once the coordinator
answers again.
"""

from __future__ import annotations

from actors.ratelimit.bucket import Clock
from actors.ratelimit.budget import RateBudget
from actors.ratelimit.limits import Limits


class FallbackShare:
    """One adapter's equal share of the scope's limits, spent on its own."""

    def __init__(self, limits: Limits, adapters: int, *, clock: Clock, burst_s: float) -> None:
        self.limits = limits.share(adapters)
        self._budget = RateBudget(rpm=self.limits.rpm, tpm=self.limits.tpm, clock=clock, full=False, burst_s=burst_s)

    async def take(self, requests: int, tokens: int) -> None:
        """Wait until the share can give ``requests`` and ``tokens``."""
        await self._budget.acquire(requests, tokens)
