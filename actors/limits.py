"""What adapters and the rate-limit coordinator say to each other, and how headers are read.

Every value that crosses the actor boundary is one of these pydantic models, so a field
never goes missing on the way. The flow, per adapter:

    LeaseRequest(reports, need, want) ─► coordinator.lease ──► Lease(requests, tokens, ttl, notice)
    [Report(429 or insufficient_quota)] ► coordinator.report ─► Notice
    coordinator.watch(epoch) ─────────────────────────────────► Notice (pause, stop, new limits)

A ``Report`` carries what the adapter has to tell since its last report (capacity given
back or spent on its own, usage, the latest ``x-ratelimit-*`` headers), so it rides along
with the next lease instead of costing a call of its own. Reports are numbered per adapter
and re-sent until a call carrying them succeeds; the coordinator applies each number once,
so a call that failed or was cancelled midway never loses or doubles a report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from actors.models import TaskError

DEFAULT_PAUSE_S = 1.0
"""Pause after a 429 that names no wait (no retry-after, no reset header)."""
MIN_BURST_S = 0.1
"""The shortest enforcement window a scope is shaped to: 429s with room left keep halving it to this."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(_Frozen):
    """Requests and tokens per minute for one scope; ``None`` = no limit known."""

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)

    @property
    def known(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def tightest(self, other: Limits) -> Limits:
        """Per dimension, the lower of two limits (a missing one does not count)."""
        return Limits(rpm=_lowest(self.rpm, other.rpm), tpm=_lowest(self.tpm, other.tpm))

    def share(self, parts: int) -> Limits:
        """One of ``parts`` equal shares, never rounded down to nothing."""
        return Limits(
            rpm=None if self.rpm is None else max(1, self.rpm // parts),
            tpm=None if self.tpm is None else max(1, self.tpm // parts),
        )


class LeasePolicy(_Frozen):
    """How big leases are and how long they live: the trade between calls and slack."""

    horizon_s: float = Field(default=5.0, gt=0)
    """Below the limit a lease also takes this long of the adapter's recent rate (if the
    scope has it to spare), so calls per request stay near 1 / (rate x horizon)."""
    ttl_s: float = Field(default=10.0, gt=0)
    """Capacity not spent by then goes back to the scope."""
    max_lease_s: float = Field(default=2.0, gt=0)
    """No lease is larger than this much of the scope's limit, so one adapter cannot hoard."""
    burst_share: float = Field(default=0.25, gt=0, le=1)
    """Nor larger than this share of the burst window, split between the adapters: what a
    lease holds may be spent all at once, on top of the bucket's own burst, and the server
    takes no more than its window at once."""
    headroom_s: float = Field(default=1.0, ge=0, lt=60)
    """The coordinator's bucket holds this much less than a full minute of the limit: the
    server starts refilling only when our first request reaches it, so after a spell at
    capacity our bucket would be ahead of the server's by the time a request takes."""
    reconnect_s: float = Field(default=1.0, gt=0)
    """First wait before asking an unreachable coordinator again; doubles up to 8x."""
    initial_burst_s: float = Field(default=1.0, gt=0, le=60)
    """The enforcement window assumed until the server's headers tell it: OpenAI may meter a
    per-minute limit per second, and a minute's burst sent to such a server comes back as
    429s. A server that allows more says so with its first answer."""

    @model_validator(mode="after")
    def _ttl_outlives_horizon(self) -> LeasePolicy:
        if self.ttl_s <= self.horizon_s:
            raise ValueError("ttl_s must exceed horizon_s, or leases expire before they are spent")
        return self


class Observation(_Frozen):
    """The ``x-ratelimit-*`` headers of one response, seen ``age_s`` before they were reported."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None
    age_s: float = Field(default=0.0, ge=0)

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], *, age_s: float = 0.0) -> Observation:
        """Read OpenAI's headers; a missing or malformed one is simply not known."""
        return cls(
            limit_requests=_int(headers.get("x-ratelimit-limit-requests")),
            limit_tokens=_int(headers.get("x-ratelimit-limit-tokens")),
            remaining_requests=_int(headers.get("x-ratelimit-remaining-requests")),
            remaining_tokens=_int(headers.get("x-ratelimit-remaining-tokens")),
            reset_requests_s=parse_duration(headers.get("x-ratelimit-reset-requests")),
            reset_tokens_s=parse_duration(headers.get("x-ratelimit-reset-tokens")),
            age_s=max(age_s, 0.0),
        )

    @property
    def limits(self) -> Limits:
        return Limits(rpm=_positive(self.limit_requests), tpm=_positive(self.limit_tokens))

    def window_s(self) -> float | None:
        """The window the server's bucket holds, from remaining + reset at its refill rate
        (the time to refill from empty); the shortest over the dimensions that tell it."""
        windows = [
            reset + remaining * 60.0 / limit
            for limit, remaining, reset in (
                (self.limit_requests, self.remaining_requests, self.reset_requests_s),
                (self.limit_tokens, self.remaining_tokens, self.reset_tokens_s),
            )
            if limit is not None and limit > 0 and remaining is not None and remaining >= 0 and reset is not None
        ]
        return min(windows, default=None)

    def has_room_for(self, tokens: int) -> bool:
        """The headers say one more request of ``tokens`` fits (both counts known and enough)."""
        return (
            self.remaining_requests is not None
            and self.remaining_requests >= 1
            and (self.remaining_tokens is None or self.remaining_tokens >= tokens)
        )

    def exhausted_reset_s(self) -> float | None:
        """Time until a dimension that has nothing left refills (a pause when no retry-after)."""
        resets = [
            reset
            for remaining, reset in ((self.remaining_requests, self.reset_requests_s), (self.remaining_tokens, self.reset_tokens_s))
            if remaining == 0 and reset is not None
        ]
        return max(resets, default=None)


class RateLimited(_Frozen):
    """A 429: how long the server asked everyone to wait, or the fatal quota error."""

    pause_s: float = Field(ge=0)
    fatal: TaskError | None = None
    despite_room: bool = False
    """The 429's own headers said the request fitted: the server enforces its limit over a
    shorter window than its headers describe, so they cannot size the burst."""


class Report(_Frozen):
    """What one adapter tells its coordinator; all counts are since its previous report."""

    seq: int = Field(ge=0)
    """Numbered per adapter, so a report sent twice is applied once."""
    returned_requests: int = 0
    """Capacity given back (> 0) or spent without the coordinator, on a fallback share (< 0)."""
    returned_tokens: int = 0
    """As ``returned_requests``; also carries the settled surplus or overrun of expired leases."""
    sent: int = 0
    reserved_tokens: int = 0
    used_tokens: int = 0
    observation: Observation | None = None
    rate_limited: RateLimited | None = None


class LeaseRequest(_Frozen):
    """Ask for capacity: wait for ``need``, take up to ``want`` if it is there now.

    ``need`` is what the adapter's waiting requests lack together (the coordinator waits
    for at most ``max_lease_s`` of the limit of it, but never less than ``first_tokens``,
    what the first of them lacks); ``want`` sizes the pool to the adapter's recent rate.
    Waiting only for real demand keeps capacity from idling in a pool nobody draws from.
    """

    client: str
    reports: list[Report] = Field(default_factory=list)
    need_requests: int = Field(default=0, ge=0)
    need_tokens: int = Field(default=0, ge=0)
    first_tokens: int = Field(default=0, ge=0)
    want_requests: int = Field(default=0, ge=0)
    want_tokens: int = Field(default=0, ge=0)


class Notice(_Frozen):
    """The scope's state an adapter must act on; ``epoch`` grows with every change."""

    incarnation: str
    """Differs after the coordinator restarted."""
    epoch: int
    limits: Limits
    clients: int = Field(ge=0)
    paused_for_s: float = 0.0
    stopped: TaskError | None = None


class Lease(_Frozen):
    """Capacity to spend within ``ttl_s``; ``None`` = that dimension is not limited."""

    requests: int | None
    tokens: int | None
    ttl_s: float
    notice: Notice
    probe: bool = False
    """No limit is known yet: this one request's answer will tell, so ask again only
    after it is settled."""


class CoordinatorSnapshot(_Frozen):
    """A point-in-time view of one scope, for the end-of-run summary and debugging."""

    scope: str
    endpoint: str
    model: str
    given: Limits
    learned: Limits
    limits: Limits
    """In force: per dimension the lower of given and learned."""
    requests_per_min: float
    """Requests sent by all adapters over the last minute (or since the first report)."""
    tokens_per_min: float
    """Tokens the server counted (prompt + output allowance) over the same window."""
    requests_sent: int
    reserved_tokens: int
    used_tokens: int
    requests_available: float | None
    tokens_available: float | None
    paused_for_s: float
    burst_s: float
    """The enforcement window the bucket is shaped to: given as a policy, then learned."""
    rate_limited: int
    """429 answers reported by adapters, the fatal one included."""
    stopped: TaskError | None
    leases_outstanding: int
    held_requests: int
    held_tokens: int
    clients: int
    calls: int
    """Calls served: leases, reports and watch answers."""
    restarted: bool


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go duration as OpenAI sends them ("120ms", "1s", "6m0s", "1h2m3.5s")."""
    if not text:
        return None
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return sum(float(number) * _SECONDS[unit] for number, unit in parts)


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _positive(value: int | None) -> int | None:
    return value if value is not None and value > 0 else None


def _lowest(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return a if b is None else b
    return min(a, b)
