"""The spending ledger behind ``--budget-usd``.

Each request reserves its worst case before it is sent and settles at its real cost when
its result arrives, so the requests in flight can never together push the total past the
limit. Amounts are kept in whole picodollars, rounded against the user (reservations and
costs up, the limit down), so float drift cannot let a long run creep over.
"""

from __future__ import annotations

import math

_UNITS_PER_USD = 10**12


def _units_up(usd: float) -> int:
    return math.ceil(usd * _UNITS_PER_USD)


class Budget:
    """A limit in USD, what was spent against it, and what is reserved for requests in flight."""

    def __init__(self, limit_usd: float, *, spent_usd: float = 0.0) -> None:
        if limit_usd <= 0:
            raise ValueError("a budget must be positive")
        self._limit = math.floor(limit_usd * _UNITS_PER_USD)
        self._spent = _units_up(spent_usd)
        self._reserved = 0
        self.closed = False

    @property
    def spent_usd(self) -> float:
        return self._spent / _UNITS_PER_USD

    @property
    def reserved_usd(self) -> float:
        return self._reserved / _UNITS_PER_USD

    def try_reserve(self, worst_case_usd: float) -> int | None:
        """Hold ``worst_case_usd`` and return the reservation, or None if it does not fit
        (now; settling requests in flight may make room) or the budget is closed."""
        units = _units_up(worst_case_usd)
        if self.closed or self._spent + self._reserved + units > self._limit:
            return None
        self._reserved += units
        return units

    def settle(self, reservation: int, cost_usd: float | None) -> None:
        """Release a reservation and charge the real cost; an unknown cost keeps the whole
        reservation as spent, since nothing says it was less."""
        self._reserved -= reservation
        self._spent += reservation if cost_usd is None else _units_up(cost_usd)

    def close(self) -> None:
        """Stop for good: from now on nothing more is reserved, so the run sends nothing more."""
        self.closed = True
