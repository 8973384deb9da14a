"""What a rate budget handed out lately, to compare with what the server says is left.

A server's ``x-ratelimit-remaining-*`` was counted when it answered, up to a round trip
ago; since then the budget granted (and got back) more. The ledger answers "how much, net,
since then?" for observations up to ``LEDGER_S`` old.
"""

from __future__ import annotations

from collections import deque

from actors.ratelimit.bucket import Clock

LEDGER_S = 60.0
"""How far back the ledger remembers: a server observation older than this cannot be
compared with the budget's books any more and is ignored."""


class GrantLedger:
    """(time, net requests taken, net tokens taken) after each change, oldest first."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._entries: deque[tuple[float, int, int]] = deque([(clock(), 0, 0)])

    def note(self, net_requests: int, net_tokens: int) -> None:
        """Record the running net totals now; keep one entry older than LEDGER_S as a base."""
        now = self._clock()
        self._entries.append((now, net_requests, net_tokens))
        while len(self._entries) > 1 and self._entries[1][0] <= now - LEDGER_S:
            self._entries.popleft()

    def taken_since(self, since: float) -> tuple[int, int]:
        """Net requests and tokens handed out after ``since`` (scans back from the newest)."""
        _, requests_now, tokens_now = self._entries[-1]
        for at, requests, tokens in reversed(self._entries):
            if at <= since:
                return requests_now - requests, tokens_now - tokens
        _, requests, tokens = self._entries[0]
        return requests_now - requests, tokens_now - tokens
