"""What adapters and the rate-limit coordinator say to each other.

Every value that crosses the actor boundary is one of these pydantic models, so a field
never goes missing on the way. The flow, per adapter:

    LeaseRequest(run, reports, need, want) ► coordinator.lease ► Lease(requests, tokens, ttl, notice)
    [Report(429 or insufficient_quota)] ► coordinator.report ─► Notice
    coordinator.watch(epoch) ─────────────────────────────────► Notice (pause, stop, new limits)
    [Report(leaving)] on close ─────────► coordinator.report ─► Notice

and per run, from its driver before its adapters start: ``coordinator.join(run, limits)``
► ``Joined`` (the limits the scope keeps to, and whether another run shares it).

A ``Report`` carries what the adapter has to tell since its last report (capacity given
back or spent on its own, usage, the latest ``x-ratelimit-*`` headers), so it rides along
with the next lease instead of costing a call of its own. Reports are numbered per adapter
and re-sent until a call carrying them succeeds; the coordinator applies each number once,
so a call that failed or was cancelled midway never loses or doubles a report.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from actors.errors import TaskError
from actors.ratelimit.headers import Observation
from actors.ratelimit.limits import FrozenModel, Limits


class LeasePolicy(FrozenModel):
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
    idle_expiry_s: float = Field(default=900.0, gt=0)
    """A coordinator nobody has called for this long exits (``coordinator_for`` or an
    adapter that needs it again creates a fresh one), so a cluster does not keep one actor
    for every scope it ever served. An adapter's parked watch keeps it alive."""
    initial_burst_s: float = Field(default=1.0, gt=0, le=60)
    """The enforcement window assumed until the server's headers tell it: OpenAI may meter a
    per-minute limit per second, and a minute's burst sent to such a server comes back as
    429s. A server that allows more says so with its first answer."""

    @model_validator(mode="after")
    def _ttl_outlives_horizon(self) -> LeasePolicy:
        if self.ttl_s <= self.horizon_s:
            raise ValueError("ttl_s must exceed horizon_s, or leases expire before they are spent")
        return self


class RateLimited(FrozenModel):
    """A 429: how long the server asked everyone to wait, or the fatal quota error."""

    pause_s: float = Field(ge=0)
    fatal: TaskError | None = None
    despite_room: bool = False
    """The 429's own headers said the request fitted: the server enforces its limit over a
    shorter window than its headers describe, so they cannot size the burst."""


class Report(FrozenModel):
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
    leaving: bool = False
    """The adapter is closing: it no longer uses the scope, so its run's limits stop counting."""


class LeaseRequest(FrozenModel):
    """Ask for capacity: wait for ``need``, take up to ``want`` if it is there now.

    ``need`` is what the adapter's waiting requests lack together (the coordinator waits
    for at most ``max_lease_s`` of the limit of it, but never less than ``first_tokens``,
    what the first of them lacks); ``want`` sizes the pool to the adapter's recent rate.
    Waiting only for real demand keeps capacity from idling in a pool nobody draws from.
    """

    client: str
    run: str | None = None
    """The run (its ``join``) the adapter belongs to: that run's limits count while its
    adapters use the scope. None: a client the coordinator cannot tell the limits of."""
    reports: list[Report] = Field(default_factory=list)
    need_requests: int = Field(default=0, ge=0)
    need_tokens: int = Field(default=0, ge=0)
    first_tokens: int = Field(default=0, ge=0)
    want_requests: int = Field(default=0, ge=0)
    want_tokens: int = Field(default=0, ge=0)


class Notice(FrozenModel):
    """The scope's state an adapter must act on; ``epoch`` grows with every change."""

    incarnation: str
    """Differs after the coordinator restarted."""
    epoch: int
    limits: Limits
    clients: int = Field(ge=0)
    paused_for_s: float = 0.0
    stopped: TaskError | None = None


class Lease(FrozenModel):
    """Capacity to spend within ``ttl_s``; ``None`` = that dimension is not limited."""

    requests: int | None
    tokens: int | None
    ttl_s: float
    notice: Notice
    probe: bool = False
    """No limit is known yet: this one request's answer will tell, so ask again only
    after it is settled."""


class Joined(FrozenModel):
    """What a run joining a scope is told (see ``Coordinator.join``)."""

    before: Limits
    """The given limits the scope kept to before this run joined."""
    given: Limits
    """The given limits it keeps to now, for every run on it."""
    others: int = Field(ge=0)
    """Other runs using the scope (joined, or their adapters heard from, in the last minute;
    adapters of no known run count as one); 0: the scope is this run's alone."""


class CoordinatorSnapshot(FrozenModel):
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
    runs: int
    """Runs that joined and still use the scope (their adapters heard from in the last minute)."""
    run_ids: list[str] = Field(default_factory=list)
    """Those runs' ids, as in their adapters' names: ``rayfan status`` pairs each run with its scope."""
    idle_s: float | None
    """How long nobody has called (None: a call is open now); at ``idle_expiry_s`` it exits."""
    idle_expiry_s: float
