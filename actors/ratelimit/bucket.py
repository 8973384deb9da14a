"""One continuously refilled token bucket, on an injected clock (pure: no Ray, no I/O, no loop).

The rate budget (``budget.py``) keeps one per limited dimension; the fake endpoint
(``drivers.mock``) enforces its limits with the same class, so both sides count alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]

EPS = 1e-9
"""Float drift: amounts this close to the target count as available, and waits this short
count as "now", so a wake at the computed time always makes progress."""


def _check_limit(capacity: float, refill_per_s: float) -> None:
    if not (capacity > 0 and refill_per_s > 0):
        raise ValueError(f"limits must be positive, got {capacity=} {refill_per_s=}")


class TokenBucket:
    """One continuously refilled bucket, full or empty at first. The level may go negative (debt)."""

    __slots__ = ("_capacity", "_rate", "_level", "_last", "_clock")

    def __init__(self, capacity: float, refill_per_s: float, *, clock: Clock = time.monotonic, full: bool = True) -> None:
        _check_limit(capacity, refill_per_s)
        self._capacity = float(capacity)
        self._rate = float(refill_per_s)
        self._clock = clock
        self._level = self._capacity if full else 0.0
        self._last = clock()

    @property
    def capacity(self) -> float:
        return self._capacity

    @property
    def refill_per_s(self) -> float:
        return self._rate

    def _refill(self) -> None:
        """Credit the time elapsed since the last look; a clock going backwards is ignored."""
        now = self._clock()
        if now > self._last:
            self._level = min(self._capacity, self._level + (now - self._last) * self._rate)
            self._last = now

    def level(self) -> float:
        """Amount available right now (negative while in debt)."""
        self._refill()
        return self._level

    def time_until(self, amount: float) -> float:
        """Seconds until ``amount`` is available; 0 if it is now.

        Amounts above capacity wait for a full bucket (not forever): the caller then
        takes the whole amount and the bucket goes into debt.
        """
        self._refill()
        need = min(amount, self._capacity) - self._level
        if need <= EPS:
            return 0.0
        wait = need / self._rate
        return wait if wait > EPS else 0.0

    def try_take(self, amount: float) -> bool:
        """Take ``amount`` if ``time_until(amount)`` is 0, else take nothing."""
        if self.time_until(amount) > 0:
            return False
        self._level -= amount
        return True

    def take(self, amount: float) -> None:
        """Take unconditionally; may leave debt (real usage above the estimate)."""
        self._refill()
        self._level -= amount

    def give(self, amount: float) -> None:
        """Refund unused capacity; never fills past capacity."""
        self._refill()
        self._level = min(self._capacity, self._level + amount)

    def set_limit(self, capacity: float, refill_per_s: float) -> None:
        """Change limits keeping the available fraction (full stays full, debt stays debt)."""
        _check_limit(capacity, refill_per_s)
        self._refill()
        self._level = self._level / self._capacity * capacity
        self._capacity = float(capacity)
        self._rate = float(refill_per_s)

    def resize(self, capacity: float) -> None:
        """Change the capacity keeping what is missing: a larger bucket gains the difference
        (the server that allows it has it too), a smaller one keeps at most its capacity."""
        _check_limit(capacity, self._rate)
        self._refill()
        self._level = min(self._level + max(capacity - self._capacity, 0.0), capacity)
        self._capacity = float(capacity)

    def clamp_to(self, level: float) -> None:
        """Lower the level to at most ``level`` (the server says fewer remain)."""
        self._refill()
        self._level = min(self._level, level)


