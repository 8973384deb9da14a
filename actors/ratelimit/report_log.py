"""The reports a coordinated limiter owes its coordinator, numbered so none is lost or doubled.

What happens between calls (requests sent, tokens used, capacity given back, the latest
headers) accumulates in ``pending``; each call takes it as the next numbered report and
carries every report not yet acknowledged, so a call that failed or was cancelled midway
is made good by the next one, and the coordinator applies each number once.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

from actors.ratelimit.headers import Observation
from actors.ratelimit.protocol import RateLimited, Report


@dataclass(slots=True)
class Pending:
    """What the next call will tell the coordinator."""

    returned_requests: int = 0
    returned_tokens: int = 0
    sent: int = 0
    reserved: int = 0
    used: int = 0
    headers: Mapping[str, str] | None = None
    headers_at: float = 0.0
    flush: bool = False
    """Send even without a lease to ask for: the pool expired with something to tell."""

    def empty(self) -> bool:
        return not (self.returned_requests or self.returned_tokens or self.sent or self.used or self.headers is not None)

    def take(self, seq: int, now: float, rate_limited: RateLimited | None = None, leaving: bool = False) -> Report:
        observation = None
        if self.headers is not None:
            observation = Observation.from_headers(self.headers, age_s=now - self.headers_at)
        report = Report(
            seq=seq,
            returned_requests=self.returned_requests,
            returned_tokens=self.returned_tokens,
            sent=self.sent,
            reserved_tokens=self.reserved,
            used_tokens=self.used,
            observation=observation,
            rate_limited=rate_limited,
            leaving=leaving,
        )
        self.returned_requests = self.returned_tokens = self.sent = self.reserved = self.used = 0
        self.headers = None
        self.flush = False
        return report


class ReportLog:
    """``pending`` now, and the numbered reports sent but not yet acknowledged."""

    def __init__(self) -> None:
        self.pending = Pending()
        self._seq = itertools.count()
        self._unacked: list[Report] = []

    def outgoing(self, now: float, rate_limited: RateLimited | None = None, *, leaving: bool = False) -> list[Report]:
        """Reports not yet acknowledged, plus one for what is pending now (if anything, or
        if it says the adapter is leaving)."""
        if rate_limited is not None or leaving or not self.pending.empty():
            self._unacked.append(self.pending.take(next(self._seq), now, rate_limited, leaving))
        return list(self._unacked)

    def acked(self, reports: list[Report]) -> None:
        done = {report.seq for report in reports}
        self._unacked = [report for report in self._unacked if report.seq not in done]
