"""The rate-limit coordinator: one budget and one backoff for every adapter of a scope.

A scope is (endpoint, API key, model): what a provider limits together. ``Coordinator`` is
a plain async class around one ``RateBudget`` (testable without Ray, on virtual time);
``RateLimitCoordinator`` is the same class as a Ray async actor, and ``coordinator_for``
gets or creates the scope's one named instance. The name is a hash, so the key never
appears in Ray's actor listing.

Adapters lease capacity in slices sized to their recent rate (``actors.ratelimit.coordinated``), so the
coordinator is called far less than once per request; what they have to say (capacity
returned, usage, ``x-ratelimit-*`` headers) rides along with the next lease. From that it
learns limits nobody gave it, tightens its bucket when the server has less left than it
thought, pauses the whole scope for the server's retry-after after any 429, and stops the
scope on ``insufficient_quota``. It also learns the window the server enforces its limits
over (a minute's burst at once, or the limit metered per second): from remaining + reset
in the headers, or, when a 429 arrives although the headers said there was room, by
halving the burst; the bucket holds that window and leases are small beside it. Capacity leased but never reported back counts as spent,
so a lost adapter can only make the scope slower, never faster than its limit.

Runs share a scope (``join``): it keeps to the lowest limits the runs using it gave, so a
second run can lower a running one's limits, and is told so, but never raise them; when
the run that gave them leaves, the others' apply again. A coordinator nobody has called for
``LeasePolicy.idle_expiry_s`` exits; whoever needs the scope next creates it again
(``LimitScope.coordinator``), adapters of a run included.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any
from dataclasses import dataclass

import ray
from pydantic import Field
from ray.actor import ActorHandle
from ray.exceptions import AsyncioActorExit, RayActorError

from actors.errors import ScopeStopped, TaskError
from actors.ratelimit.bucket import Clock
from actors.ratelimit.budget import RateBudget
from actors.ratelimit.headers import Observation
from actors.ratelimit.limits import FrozenModel, Limits
from actors.ratelimit.protocol import CoordinatorSnapshot, Joined, Lease, LeasePolicy, LeaseRequest, Notice, RateLimited, Report
from actors.telemetry import GAUGE_REFRESH_S, ScopeMetrics

log = logging.getLogger(__name__)

NAMESPACE = "rayfan"
"""Named coordinators live here, so every job on the cluster finds the same one."""
SCOPE_NAME_PREFIX = "rayfan-limits-"
WATCH_TIMEOUT_S = 30.0
"""A watch answers at least this often, so watches of adapters that died do not pile up."""
ACTIVE_S = 60.0
"""An adapter heard from within this long counts towards the fallback share."""
FORGET_S = 600.0
"""An adapter silent this long is forgotten: any report it could still re-send is older."""
SEEN_REPORTS = 256
"""Report numbers remembered per adapter; a re-sent report is always far more recent."""
RATE_WINDOW_S = 60.0
"""Current rates in the snapshot are over this window."""
MIN_BURST_S = 0.1
"""The shortest enforcement window a scope is shaped to: 429s with room left keep halving it to this."""
BURST_CHANGE = 0.1
"""A learned window this close (relative) to the one in force changes nothing: headers jitter."""
SHRINK_SETTLE_S = 5.0
"""After halving the burst, 429s of requests granted before it are not a reason to halve again."""
MAX_CONCURRENCY = 10_000
"""Calls one coordinator serves at once: each adapter parks one watch and one lease."""
JOIN_ATTEMPTS = 3
"""A coordinator found just as it expires is gone when asked: a fresh one is made and asked."""


def scope_name(endpoint: str, api_key: str, model: str) -> str:
    """A stable actor name for the scope that reveals nothing about the key."""
    digest = hashlib.sha256(f"{endpoint}|{api_key}|{model}".encode()).hexdigest()[:16]
    return f"{SCOPE_NAME_PREFIX}{digest}"


@dataclass
class _Held:
    """Capacity leased to one adapter and not yet reported spent or returned."""

    requests: int = 0
    tokens: int = 0
    expires_at: float = 0.0


@dataclass
class _Run:
    """A run that joined the scope, and the limits it gave."""

    limits: Limits
    joined_at: float


class Coordinator:
    """Leases a scope's RPM/TPM budget to adapters and turns their reports into one policy."""

    def __init__(
        self,
        *,
        scope: str,
        endpoint: str,
        model: str,
        limits: Limits | None = None,
        policy: LeasePolicy | None = None,
        clock: Clock = time.monotonic,
        restarted: bool = False,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        """``on_idle`` is called once nobody has called for ``policy.idle_expiry_s`` (the
        actor exits there); without it the coordinator lives as long as its owner."""
        self._scope, self._endpoint, self._model = scope, endpoint, model
        self._given = limits or Limits()
        self._learned = Limits()
        self._limits = self._given
        self._policy = policy or LeasePolicy()
        self._clock = clock
        self._restarted = restarted
        # A restarted coordinator cannot know what was spent just before: it starts empty.
        self._budget = RateBudget(
            rpm=self._given.rpm,
            tpm=self._given.tpm,
            clock=clock,
            full=not restarted,
            headroom_s=self._policy.headroom_s,
            burst_s=self._policy.initial_burst_s,
        )
        self._headers_show_window = True
        self._shrunk_at = -SHRINK_SETTLE_S
        self._incarnation = uuid.uuid4().hex[:12]
        self._epoch = 0
        self._changed: asyncio.Future[None] | None = None
        self._seen_response = False
        self._stopped: TaskError | None = None
        self._rate_limited = 0
        self._calls = 0
        self._held: dict[str, _Held] = {}
        self._last_seen: dict[str, float] = {}
        self._applied: dict[str, deque[int]] = {}
        self._created_at = clock()
        self._window: deque[tuple[float, int, int]] = deque()
        self._sent = self._reserved = self._used = 0
        self._runs: dict[str, _Run] = {}
        self._client_run: dict[str, str] = {}
        self._on_idle = on_idle
        self._active_at = clock()
        self._open_calls = 0
        self._expiry: asyncio.TimerHandle | None = None
        self._metrics = ScopeMetrics(scope, model)
        self._metrics.limits(self._limits.rpm, self._limits.tpm)
        self._metrics.stopped(False)

    # -- remote API -------------------------------------------------------------------

    async def lease(self, request: LeaseRequest) -> Lease:
        """Apply the report, then wait (FIFO, behind any pause) for a slice of the budget."""
        with self._call_open():
            return await self._lease(request)

    async def _lease(self, request: LeaseRequest) -> Lease:
        self._calls += 1
        if request.run is not None:
            self._client_run[request.client] = request.run
        self._apply(request.client, request.reports)
        self._refresh_given(self._clock())
        wanted = max(request.need_requests, request.want_requests, request.need_tokens, request.want_tokens) > 0
        if not wanted or self._stopped is not None:
            return Lease(requests=0, tokens=0, ttl_s=self._policy.ttl_s, notice=self._notice())
        probing = self._probing
        requests, tokens = self._wait_for(request)
        try:
            await self._budget.acquire(requests, tokens)
        except ScopeStopped:
            return Lease(requests=0, tokens=0, ttl_s=self._policy.ttl_s, notice=self._notice())
        if not probing:
            extra_requests, extra_tokens = self._budget.take_available(*self._extra(request, requests, tokens))
            requests, tokens = requests + extra_requests, tokens + extra_tokens
        self._hold(request.client, requests, tokens)
        return Lease(
            requests=requests if self._limits.rpm is not None or probing else None,
            tokens=tokens if self._limits.tpm is not None else None,
            ttl_s=self._policy.ttl_s,
            notice=self._notice(),
            probe=probing,
        )

    async def report(self, client: str, reports: list[Report]) -> Notice:
        """Take reports that cannot wait for the next lease (a 429, capacity back from an idle adapter)."""
        self._calls += 1
        self._touch()
        self._apply(client, reports)
        return self._notice()

    async def watch(self, client: str, epoch: int, incarnation: str | None) -> Notice:
        """Answer when the scope changes after ``epoch`` (pause, stop, limits), or after a while.

        A caller that knew another incarnation is answered at once: it is reconnecting.
        """
        self._last_seen[client] = self._clock()
        with self._call_open():
            if incarnation == self._incarnation and epoch >= self._epoch:
                if self._changed is None:
                    self._changed = asyncio.get_running_loop().create_future()
                await asyncio.wait({self._changed}, timeout=WATCH_TIMEOUT_S)
        self._calls += 1
        return self._notice()

    async def join(self, run: str, limits: Limits) -> Joined:
        """Run ``run`` starts on the scope with the limits it was given (its driver calls
        this before its adapters start); a scope an earlier run stopped is reopened.

        The scope keeps to the lowest given limits, per dimension, of the runs using it: a
        run alone sets them; a run joining others can lower them, never raise them; when a
        run leaves (its adapters close, or fall silent for ``ACTIVE_S``) the others' apply
        again. Adapters of no known run (their coordinator was restarted, or they were
        built without a run) hold the limits in force until they leave.
        """
        now = self._clock()
        self._touch()
        await self.reopen()
        self._refresh_given(now)
        before = self._given
        runs, anonymous = self._users(now)
        self._runs[run] = _Run(limits=limits, joined_at=now)
        self._refresh_given(now)
        return Joined(before=before, given=self._given, others=len(runs) + anonymous)

    async def configure(self, limits: Limits) -> None:
        """Set the given limits by hand; a dimension left ``None`` keeps its value. Runs that
        joined (``join``) set them again with their own as they use the scope."""
        self._given = Limits(rpm=limits.rpm or self._given.rpm, tpm=limits.tpm or self._given.tpm)
        self._update_limits()

    async def reopen(self) -> None:
        """A new run starts: a scope stopped by an earlier one (no credit, a rejected key, an
        unreachable endpoint) sends again, since its user has had the chance to fix that;
        if nothing was fixed, its first few requests stop it again."""
        if self._stopped is not None:
            self._stopped = None
            self._budget.reopen()
            self._metrics.stopped(False)
            self._bump()

    async def snapshot(self) -> CoordinatorSnapshot:
        now = self._clock()
        self._trim_window(now)
        span = min(RATE_WINDOW_S, now - self._created_at)
        per_min = 60.0 / span if span > 0 else 0.0
        live = [held for held in self._held.values() if held.expires_at > now and (held.requests > 0 or held.tokens > 0)]
        budget = self._budget.snapshot()
        runs = self._users(now)[0]
        return CoordinatorSnapshot(
            scope=self._scope,
            endpoint=self._endpoint,
            model=self._model,
            given=self._given,
            learned=self._learned,
            limits=self._limits,
            requests_per_min=sum(sent for _, sent, _ in self._window) * per_min,
            tokens_per_min=sum(used for _, _, used in self._window) * per_min,
            requests_sent=self._sent,
            reserved_tokens=self._reserved,
            used_tokens=self._used,
            requests_available=budget["requests_available"],
            tokens_available=budget["tokens_available"],
            paused_for_s=self._pause_left(),
            burst_s=self._budget.burst_s,
            rate_limited=self._rate_limited,
            stopped=self._stopped,
            leases_outstanding=len(live),
            held_requests=sum(held.requests for held in live),
            held_tokens=sum(held.tokens for held in live),
            clients=self._clients(now),
            calls=self._calls,
            restarted=self._restarted,
            runs=len(runs),
            run_ids=sorted(runs),
            idle_s=None if self._open_calls else now - self._active_at,
            idle_expiry_s=self._policy.idle_expiry_s,
        )

    # -- reports ----------------------------------------------------------------------

    def _apply(self, client: str, reports: list[Report]) -> None:
        now = self._clock()
        if client not in self._last_seen:
            self._forget_gone(now)
        self._last_seen[client] = now
        applied = self._applied.setdefault(client, deque(maxlen=SEEN_REPORTS))
        for report in reports:
            if report.seq not in applied:
                applied.append(report.seq)
                self._apply_one(client, report)
        if any(report.leaving for report in reports):
            self._leave(client, now)

    def _leave(self, client: str, now: float) -> None:
        """The adapter closed: it no longer counts towards the scope's users (its last
        report gave back what it held)."""
        self._last_seen.pop(client, None)
        self._held.pop(client, None)
        self._client_run.pop(client, None)
        self._refresh_given(now)

    def _apply_one(self, client: str, report: Report) -> None:
        now = self._clock()
        self._settle_returned(report.returned_requests, report.returned_tokens)
        held = self._held.get(client)
        if held is not None:
            held.requests = max(0, held.requests - report.sent - max(report.returned_requests, 0))
            held.tokens = max(0, held.tokens - report.reserved_tokens - max(report.returned_tokens, 0))
        if report.sent or report.used_tokens:
            self._sent += report.sent
            self._reserved += report.reserved_tokens
            self._used += report.used_tokens
            self._window.append((now, report.sent, report.used_tokens))
            self._trim_window(now)
            self._metrics.reported(report.sent, report.reserved_tokens, report.used_tokens)
        if report.observation is not None:
            self._observe(report.observation)
        if report.rate_limited is not None:
            self._on_rate_limited(report.rate_limited)

    def _settle_returned(self, requests: int, tokens: int) -> None:
        """Positive amounts come back to the budget; negative ones were spent on a fallback share."""
        if requests > 0 or tokens > 0:
            self._budget.refund(max(requests, 0), max(tokens, 0))
        if requests < 0 or tokens < 0:
            self._budget.charge(max(-requests, 0), max(-tokens, 0))

    def _observe(self, observation: Observation) -> None:
        self._seen_response = True
        learned = observation.limits
        if learned.known:
            self._learned = Limits(rpm=learned.rpm or self._learned.rpm, tpm=learned.tpm or self._learned.tpm)
            self._update_limits()
        window = observation.window_s()
        if window is not None and self._headers_show_window:
            self._set_burst(window)
        self._budget.observe_remaining(
            observation.remaining_requests, observation.remaining_tokens, age_s=observation.age_s
        )

    def _on_rate_limited(self, event: RateLimited) -> None:
        self._rate_limited += 1
        self._metrics.rate_limited()
        if event.fatal is not None:
            self._stop(event.fatal)
            return
        if event.despite_room:
            self._shrink_burst()
        now = self._clock()
        before = self._budget.paused_until
        self._budget.pause_until(now + event.pause_s)
        after = self._budget.paused_until
        if after is not None and after != before:
            self._metrics.paused(after - (now if before is None else before))
            self._bump()

    def _set_burst(self, window_s: float) -> None:
        window_s = min(max(window_s, MIN_BURST_S), 60.0)
        if abs(window_s - self._budget.burst_s) > BURST_CHANGE * self._budget.burst_s:
            self._budget.set_burst_s(window_s)

    def _shrink_burst(self) -> None:
        """A 429 although the headers said the request fitted: the server meters its limit
        over a shorter window than the headers show. Stop trusting them for the window, and
        halve the burst (to at most a second) once per settling time."""
        self._headers_show_window = False
        now = self._clock()
        if now >= self._shrunk_at + SHRINK_SETTLE_S:
            self._shrunk_at = now
            self._set_burst(min(self._budget.burst_s / 2, 1.0))

    def _stop(self, error: TaskError) -> None:
        if self._stopped is not None:
            return
        self._stopped = error
        self._budget.shut(lambda: ScopeStopped(error))
        self._metrics.stopped(True)
        self._bump()

    def _update_limits(self) -> None:
        limits = self._given.tightest(self._learned)
        if limits != self._limits:
            self._limits = limits
            self._budget.set_limits(rpm=limits.rpm, tpm=limits.tpm)
            self._metrics.limits(limits.rpm, limits.tpm)
            self._bump()

    # -- leasing ----------------------------------------------------------------------

    @property
    def _probing(self) -> bool:
        """No limit known and no response seen yet: lease one request at a time until the
        first response's headers say what the limits are (or that there are none)."""
        return not self._limits.known and not self._seen_response

    def _wait_for(self, request: LeaseRequest) -> tuple[int, int]:
        """What the waiting requests lack, capped; the first of them is always served whole."""
        if self._probing:
            return 1, 0
        return (
            min(request.need_requests, self._cap(self._limits.rpm)),
            max(min(request.need_tokens, self._cap(self._limits.tpm)), request.first_tokens),
        )

    def _extra(self, request: LeaseRequest, requests: int, tokens: int) -> tuple[int, int]:
        """Up to ``want`` (capped) beyond what was waited for; taken only if it is there now."""
        return (
            max(0, min(request.want_requests, self._cap(self._limits.rpm)) - requests),
            max(0, min(request.want_tokens, self._cap(self._limits.tpm)) - tokens),
        )

    def _cap(self, per_minute: int | None) -> int:
        """``max_lease_s`` of a limit, and no more than the adapters heard from share of
        ``burst_share`` of the burst window; nothing for a dimension without a limit."""
        if per_minute is None:
            return 0
        share_s = self._budget.burst_s * self._policy.burst_share / max(1, self._clients(self._clock()))
        return max(1, int(per_minute / 60.0 * min(self._policy.max_lease_s, share_s)))

    def _hold(self, client: str, requests: int, tokens: int) -> None:
        held = self._held.setdefault(client, _Held())
        held.requests += requests
        held.tokens += tokens
        held.expires_at = self._clock() + self._policy.ttl_s

    # -- notices ----------------------------------------------------------------------

    def _notice(self) -> Notice:
        return Notice(
            incarnation=self._incarnation,
            epoch=self._epoch,
            limits=self._limits,
            clients=self._clients(self._clock()),
            paused_for_s=self._pause_left(),
            stopped=self._stopped,
        )

    def _bump(self) -> None:
        """Something adapters must act on changed: answer every watch."""
        self._epoch += 1
        if self._changed is not None:
            self._changed.set_result(None)
            self._changed = None

    def _pause_left(self) -> float:
        until = self._budget.paused_until
        return 0.0 if until is None else max(0.0, until - self._clock())

    def _clients(self, now: float) -> int:
        return sum(seen > now - ACTIVE_S for seen in self._last_seen.values())

    def _forget_gone(self, now: float) -> None:
        """Drop adapters silent for ``FORGET_S`` (runs come and go; the coordinator stays)."""
        for client in [client for client, seen in self._last_seen.items() if seen <= now - FORGET_S]:
            del self._last_seen[client]
            self._held.pop(client, None)
            self._applied.pop(client, None)
            self._client_run.pop(client, None)

    def _trim_window(self, now: float) -> None:
        while self._window and self._window[0][0] <= now - RATE_WINDOW_S:
            self._window.popleft()

    # -- runs sharing the scope -------------------------------------------------------

    def _users(self, now: float) -> tuple[list[str], bool]:
        """The runs using the scope (joined, or an adapter heard from, within ``ACTIVE_S``),
        and whether adapters of no known run are using it too."""
        seen = {self._client_run.get(client) for client, at in self._last_seen.items() if at > now - ACTIVE_S}
        runs = [run for run, entry in self._runs.items() if run in seen or entry.joined_at > now - ACTIVE_S]
        return runs, any(run is None or run not in self._runs for run in seen)

    def _refresh_given(self, now: float) -> None:
        """Given limits: the lowest the runs using the scope gave, and those in force while
        adapters of no known run use it. With no run left, the last ones stand."""
        runs, anonymous = self._users(now)
        for gone in self._runs.keys() - set(runs):
            del self._runs[gone]
        if runs:
            given = [self._runs[run].limits for run in runs] + ([self._given] if anonymous else [])
            self._given = functools.reduce(Limits.tightest, given)
            self._update_limits()

    # -- expiry -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _call_open(self) -> Iterator[None]:
        """A call in progress (a parked watch, a lease waiting its turn) keeps the scope alive."""
        self._open_calls += 1
        try:
            yield
        finally:
            self._open_calls -= 1
            self._touch()

    def _touch(self) -> None:
        """Somebody called: the idle time starts again (and the timer, on the first call)."""
        self._active_at = self._clock()
        if self._expiry is None and self._on_idle is not None:
            self._arm_expiry()

    def _arm_expiry(self) -> None:
        loop = asyncio.get_running_loop()
        delay = self._active_at + self._policy.idle_expiry_s - self._clock()
        self._expiry = loop.call_at(loop.time() + delay, self._check_idle)

    def _check_idle(self) -> None:
        """Expire if nobody called since; a call still open re-arms the timer as it ends."""
        self._expiry = None
        if self._open_calls or self._on_idle is None:
            return
        if self._clock() >= self._active_at + self._policy.idle_expiry_s:
            self._on_idle()
        else:
            self._arm_expiry()


class _CoordinatorActor(Coordinator):
    """The coordinator inside Ray: knows when Ray restarted it, and then starts empty; exits
    when idle; keeps its gauges visible. Ray runs an async actor's ``__init__`` on its event
    loop, so the timers start here, and a coordinator nobody ever calls expires too."""

    def __init__(self, *, scope: str, endpoint: str, model: str, limits: Limits, policy: LeasePolicy) -> None:
        with warnings.catch_warnings():  # Ray's own property trips its own deprecation of actor_id
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        super().__init__(
            scope=scope, endpoint=endpoint, model=model, limits=limits, policy=policy, restarted=restarted, on_idle=self._exit_idle
        )
        with contextlib.suppress(RuntimeError):  # no loop yet (another Ray version): the first call starts it
            self._touch()
            self._refresh_gauges()

    def _refresh_gauges(self) -> None:
        self._metrics.refresh()
        asyncio.get_running_loop().call_later(GAUGE_REFRESH_S, self._refresh_gauges)

    def _exit_idle(self) -> None:
        """Leave the cluster; Ray frees the name, so the next caller creates a fresh
        coordinator. ``exit_actor`` raises to unwind an actor method: a timer has none."""
        log.info("%s (%s, %s): no calls for %.0f s; exiting", self._scope, self._endpoint, self._model, self._policy.idle_expiry_s)
        exit_from_timer()


def exit_from_timer() -> None:
    """End this async actor from a loop callback: ``exit_actor`` raises to unwind an actor
    method, and a timer has none."""
    try:
        ray.actor.exit_actor()  # type: ignore[no-untyped-call]  # Ray leaves it unannotated
    except AsyncioActorExit:
        pass


RateLimitCoordinator = ray.remote(max_restarts=-1, max_concurrency=MAX_CONCURRENCY, num_cpus=0)(_CoordinatorActor)  # type: ignore[call-overload]  # Ray's stubs omit max_concurrency


class LimitScope(FrozenModel):
    """A scope's coordinator as a recipe: its name and what it is created with, so whoever
    needs the scope (a driver, an adapter whose coordinator expired) finds it or makes it."""

    name: str
    """``scope_name(...)``: a hash, never the key."""
    endpoint: str
    model: str
    limits: Limits = Field(default_factory=Limits)
    policy: LeasePolicy = Field(default_factory=LeasePolicy)

    @classmethod
    def of(cls, endpoint: str, api_key: str, model: str, *, limits: Limits | None = None, policy: LeasePolicy | None = None) -> LimitScope:
        return cls(
            name=scope_name(endpoint, api_key, model), endpoint=endpoint, model=model, limits=limits or Limits(), policy=policy or LeasePolicy()
        )

    def coordinator(self) -> ActorHandle[Any]:
        """The scope's coordinator, created if none runs. Detached, so it outlives the job
        that created it and other jobs on the cluster share it (until it expires)."""
        handle: ActorHandle[Any] = RateLimitCoordinator.options(
            name=self.name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached"
        ).remote(scope=self.name, endpoint=self.endpoint, model=self.model, limits=self.limits, policy=self.policy)
        return handle


def new_run() -> str:
    """An id for one run on a scope: random, so it says nothing about who runs it."""
    return uuid.uuid4().hex[:12]


class ScopeJoin:
    """``run`` joining ``scope`` with its limits (``Coordinator.join``), asked and not yet
    answered: on a scope's first run the coordinator is a new worker process, which starts
    while the run's adapters do. The run sends nothing before ``wait`` has returned, so the
    scope knows its limits before the first lease."""

    def __init__(self, scope: LimitScope, run: str) -> None:
        self.scope = scope
        self.run = run
        self.handle, self._answer = self._ask()

    def _ask(self) -> tuple[ActorHandle[Any], ray.ObjectRef[Joined]]:
        handle = self.scope.coordinator()
        return handle, handle.join.remote(self.run, self.scope.limits)

    def wait(self) -> ActorHandle[Any]:
        """The coordinator, once it has joined the run: the one asked, or a fresh one if
        that expired between being found and being asked. When another run shares the
        scope and the limits in force are not the ones this run gave, or it lowered the
        other's, one warning line says so."""
        for attempt in range(1, JOIN_ATTEMPTS + 1):
            try:
                joined: Joined = ray.get(self._answer)
            except RayActorError:
                if attempt == JOIN_ATTEMPTS:
                    raise
                self.handle, self._answer = self._ask()
                continue
            note = sharing_note(self.scope.limits, joined)
            if note is not None:
                log.warning("%s", note)
            return self.handle
        raise AssertionError("the loop returns or raises")


def join_scope(scope: LimitScope, run: str) -> ActorHandle[Any]:
    """``run`` joins ``scope`` (see ``ScopeJoin``): the coordinator, created on first use."""
    return ScopeJoin(scope, run).wait()


def coordinator_for(
    endpoint: str, api_key: str, model: str, *, limits: Limits | None = None, policy: LeasePolicy | None = None
) -> ActorHandle[Any]:
    """The scope's coordinator, created on first use, joined as a new run with ``limits``
    (see ``Coordinator.join`` for how runs sharing a scope combine theirs); a scope an
    earlier run stopped is reopened. ``CoordinatedLimitSpec.shared`` also tells the
    adapters their run, so the coordinator knows when it leaves."""
    return join_scope(LimitScope.of(endpoint, api_key, model, limits=limits, policy=policy), new_run())


def sharing_note(gave: Limits, joined: Joined) -> str | None:
    """The warning for a run that shares its scope, or None when its limits are the ones in
    force and it changed nobody else's."""
    if not joined.others:
        return None
    changes: list[str] = []
    for dimension in ("rpm", "tpm"):
        mine, before, now = getattr(gave, dimension), getattr(joined.before, dimension), getattr(joined.given, dimension)
        if mine is None:
            continue
        if now is not None and now < mine:
            changes.append(f"the scope keeps to {dimension.upper()} {now:,}, not your {mine:,}")
        elif before is None or mine < before:
            was = "it gave none" if before is None else f"was {before:,}"
            changes.append(f"your {dimension.upper()} {mine:,} now holds the other runs too ({was})")
    if not changes:
        return None
    runs = f"{joined.others} other run{'s' if joined.others > 1 else ''}"
    return (
        f"this rate-limit scope is shared with {runs}: {'; '.join(changes)}."
        " Runs sharing a scope keep to the lowest limits given, until the run that gave them ends."
    )
