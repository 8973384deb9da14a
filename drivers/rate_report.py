"""What a run did against its rate limits, for the end-of-run summary.

The numbers are this run's own (from its adapters' counters), so another job sharing the
scope's coordinator does not blur them; the limits are the ones in force at the end,
given (``--rpm``/``--tpm``) or learned from the server's headers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from actors.adapter.stats import AdapterStats
from actors.ratelimit.limits import Limits
from actors.ratelimit.protocol import CoordinatorSnapshot
from actors.ratelimit.specs import CoordinatedLimitSpec
from drivers.fanout import get_each

log = logging.getLogger(__name__)

SHORT_RUN_S = 60.0
"""Runs shorter than a minute are reported as counts against what the limits allow in
that time, not as a per-minute rate that a minute's burst up front would inflate."""


class RateReport(BaseModel):
    """Requests and tokens per minute achieved, against the limits, and the 429s it cost."""

    model_config = ConfigDict(frozen=True)

    limits: Limits
    burst_s: float | None = None
    """The window the coordinator found the server enforcing its limits over (None: gone)."""
    requests: int
    """HTTP attempts sent, retries included."""
    rate_limited: int
    tokens: int
    """Prompt + completion tokens the server reported."""
    wall_s: float

    @property
    def requests_per_min(self) -> float:
        return self.requests * 60.0 / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def tokens_per_min(self) -> float:
        return self.tokens * 60.0 / self.wall_s if self.wall_s > 0 else 0.0

    def render(self) -> str:
        rejected = self.rate_limited / self.requests if self.requests else 0.0
        outcome = f"{self.rate_limited} answered 429 ({rejected:.1%} of {self.requests} requests)"
        if self.wall_s < SHORT_RUN_S and self.requests:
            return f"rate: {self.requests:,} requests and {self.tokens:,} tokens in {self.wall_s:.1f} s{self._allowance()}; {outcome}"
        window = "" if self.burst_s is None or not self.limits.known else f"; bursts of at most {self.burst_s:.3g} s of the limit"
        return (
            f"rate: {self.requests_per_min:,.0f} requests/min{_of(self.requests_per_min, self.limits.rpm, 'RPM')},"
            f" {self.tokens_per_min:,.0f} tokens/min{_of(self.tokens_per_min, self.limits.tpm, 'TPM')}; {outcome}{window}"
        )

    def _allowance(self) -> str:
        """What the limits let through in a run this short: a burst up front, then the rate.
        Per minute, a few seconds' burst reads as many times the limit and is none."""
        burst_s = SHORT_RUN_S if self.burst_s is None else self.burst_s
        allowed = [
            f"{limit * (self.wall_s + burst_s) / 60:,.0f} {unit}"
            for limit, unit in ((self.limits.rpm, "requests"), (self.limits.tpm, "tokens"))
            if limit is not None
        ]
        return f" (the limits allow {' and '.join(allowed)} in that time, {burst_s:.3g} s of them at once)" if allowed else ""


def close_and_report(adapters: Sequence[ActorHandle[Any]], limit: CoordinatedLimitSpec, wall_s: float) -> RateReport:
    """Close the run's adapters, then sum their counters.

    Closing first sends their last reports (usage, headers, capacity they still hold) to
    the coordinator, which outlives the run. The limits come from the coordinator, or as
    given if it is gone.
    """
    _values([adapter.close.remote() for adapter in adapters])
    stats: list[AdapterStats] = _values([adapter.stats.remote() for adapter in adapters])
    snapshot_ref: ray.ObjectRef[CoordinatorSnapshot] = limit.coordinator.snapshot.remote()
    snapshot: CoordinatorSnapshot | None
    try:
        snapshot = ray.get(snapshot_ref)
    except RayActorError:
        snapshot = None
    for index, counts in enumerate(stats):
        log.info(
            "adapter %d: %d requests sent (%d retries, %d answered 429); %d completed, %d failed, %d cancelled; %d + %d tokens; $%.6f",
            index, counts.requests, counts.retries, counts.rate_limited, counts.completed, counts.failed, counts.cancelled,
            counts.prompt_tokens, counts.completion_tokens, counts.cost_usd,
        )
    if snapshot is not None:
        log.info(
            "scope %s: limits given %s, learned %s, in force %s; bursts of %.3g s; %d answered 429 in all",
            snapshot.scope, _limits(snapshot.given), _limits(snapshot.learned), _limits(snapshot.limits), snapshot.burst_s, snapshot.rate_limited,
        )
    return RateReport(
        limits=limit.limits if snapshot is None else snapshot.limits,
        burst_s=None if snapshot is None else snapshot.burst_s,
        requests=sum(s.requests for s in stats),
        rate_limited=sum(s.rate_limited for s in stats),
        tokens=sum(s.prompt_tokens + s.completion_tokens for s in stats),
        wall_s=wall_s,
    )


def _values(refs: list[ray.ObjectRef[Any]]) -> list[Any]:
    """Every value, skipping adapters that died (their requests already ended as adapter_died)."""
    values = []
    for value in get_each(refs):
        if isinstance(value, RayActorError):
            continue
        if isinstance(value, BaseException):
            raise value
        values.append(value)
    return values


def _of(achieved: float, limit: int | None, unit: str) -> str:
    return "" if limit is None else f" ({achieved / limit:.2f} of the {limit:,} {unit} limit)"


def _limits(limits: Limits) -> str:
    parts = [f"{value:,} {unit}" for value, unit in ((limits.rpm, "RPM"), (limits.tpm, "TPM")) if value is not None]
    return " and ".join(parts) or "none"
