"""What a server says about its rate limits: OpenAI's ``x-ratelimit-*`` headers, read leniently.

A missing or malformed header is simply not known; durations come as Go durations
("120ms", "6m0s"). The coordinator learns limits, what is left and the window the server
enforces over from these (``actors.ratelimit.coordinator``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import Field

from actors.ratelimit.limits import FrozenModel, Limits

DEFAULT_PAUSE_S = 1.0
"""Pause after a 429 that names no wait (no retry-after, no reset header)."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Observation(FrozenModel):
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
