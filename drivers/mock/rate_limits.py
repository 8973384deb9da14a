"""Per-key RPM/TPM limits and the 429s and ``x-ratelimit-*`` headers OpenAI answers them with."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from actors.ratelimit.bucket import TokenBucket
from drivers.mock.replies import error

if TYPE_CHECKING:  # the server imports this module
    from drivers.mock.server import MockConfig


def _format_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset format (Go durations): "120ms", "1s", "7.66s", "6m0s"."""
    ms = _ceil_ms(seconds)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    minutes, ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    return f"{minutes}m{secs}" if minutes else secs


def _ceil_ms(seconds: float) -> int:
    """Whole milliseconds, rounded up so a client waiting this long is never early."""
    return math.ceil(round(seconds * 1000, 6))


@dataclass(slots=True)
class _Admission:
    headers: dict[str, str]
    wait_s: float  # 0 = admitted; inf = larger than the limit itself
    kind: str  # the bucket that decided: "requests" or "tokens"
    limit: int


@dataclass(slots=True)
class _Limit:
    """One key's buckets for one dimension: the one enforced, and a minute's for the headers."""

    per_minute: int
    window_s: float
    enforced: TokenBucket
    minute: TokenBucket

    @classmethod
    def new(cls, per_minute: int, window_s: float) -> _Limit:
        rate = per_minute / 60.0
        return cls(per_minute, window_s, TokenBucket(rate * window_s, rate), TokenBucket(per_minute, rate))


class RateLimiter:
    """Per-key limits over ``MockConfig.rate_window_s`` (see the package doc), with
    ``actors.ratelimit.bucket.TokenBucket``: a request larger than the window waits for a full
    bucket and leaves it in debt, one larger than the per-minute limit never fits.

    The limits are read per call, so ``configure`` takes effect at once; buckets start full.
    Not thread-safe: the server calls it under its lock.
    """

    def __init__(self) -> None:
        self._limits: dict[tuple[str, str], _Limit] = {}

    def clear(self) -> None:
        self._limits.clear()

    def admit(self, key: str, cost: int, config: MockConfig) -> _Admission:
        """Take 1 request and ``cost`` tokens if both buckets have them; else say how long to wait."""
        wants = [(kind, limit, n) for kind, limit, n in (("requests", config.rpm_limit, 1), ("tokens", config.tpm_limit, cost)) if limit]
        limits = [self._limit(key, kind, per_minute, config.rate_window_s) for kind, per_minute, _ in wants]
        waits = [limit.enforced.time_until(n) if n <= per_minute else math.inf for (_, per_minute, n), limit in zip(wants, limits)]
        worst = max(range(len(waits)), key=waits.__getitem__)
        if not waits[worst]:
            for (_, _, n), limit in zip(wants, limits):
                limit.enforced.take(n)
                limit.minute.take(n)
        headers = {}
        if config.ratelimit_headers:
            for (kind, per_minute, _), limit in zip(wants, limits):
                shown = limit.minute if config.headers_show_minute else limit.enforced
                level = shown.level()
                headers[f"x-ratelimit-limit-{kind}"] = str(per_minute)
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(math.floor(level), 0))
                headers[f"x-ratelimit-reset-{kind}"] = _format_duration((shown.capacity - level) / shown.refill_per_s)
        return _Admission(headers, waits[worst], wants[worst][0], wants[worst][1])

    def _limit(self, key: str, kind: str, per_minute: int, window_s: float) -> _Limit:
        limit = self._limits.get((key, kind))
        if limit is None or (limit.per_minute, limit.window_s) != (per_minute, window_s):
            limit = self._limits[(key, kind)] = _Limit.new(per_minute, window_s)
        return limit


def rate_limited(admission: _Admission, cost: int, headers: dict[str, str]) -> web.Response:
    """The 429 for a refused admission, with OpenAI's message and retry-after headers."""
    kind, limit = admission.kind, admission.limit
    if math.isinf(admission.wait_s):
        message = f"Request too large for {kind} per min: Limit {limit}, Requested {cost}."
        return error(429, message, headers, type_=kind, code="rate_limit_exceeded")
    ms = _ceil_ms(admission.wait_s)
    headers["retry-after-ms"] = str(ms)
    headers["retry-after"] = str(math.ceil(ms / 1000))
    wait = _format_duration(ms / 1000)
    message = f"Rate limit reached for {kind} per min: Limit {limit}. Please try again in {wait}."
    return error(429, message, headers, type_=kind, code="rate_limit_exceeded")
