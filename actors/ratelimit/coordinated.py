"""The adapter's side of a coordinated scope: capacity leased in slices and spent locally.

A ``CoordinatedLimiter`` keeps a local pool (requests, tokens) leased from the scope's
coordinator and spends one request and its reservation from it per attempt, so the
coordinator is called about once per lease, not once per request. When the pool cannot
serve the first waiting attempt, one lease call asks for what all waiting attempts lack
(and, if the scope has it to spare, for ``horizon_s`` of the adapter's recent rate); the
other attempts wait on futures, in order. A settled attempt's surplus goes back into the
pool; what is left when the pool expires, usage and the latest ``x-ratelimit-*`` headers
ride along with the next call (``report_log.py``).

One parked ``watch`` call per adapter brings pauses (any adapter's 429), a stop
(insufficient_quota, a rejected key, an unreachable endpoint) and new limits at once.
When the coordinator cannot be reached the limiter spends a fallback share
(``fallback.py``) and reports that spending as debt once the coordinator answers again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from actors.errors import ScopeStopped, TaskError
from actors.ratelimit.bucket import Clock
from actors.ratelimit.fallback import FallbackShare
from actors.ratelimit.limiter import Limiter, Permit
from actors.ratelimit.limits import Limits
from actors.ratelimit.link import CoordinatorLink, CoordinatorUnreachable
from actors.ratelimit.protocol import LeasePolicy, LeaseRequest, Notice, RateLimited, Report
from actors.ratelimit.report_log import ReportLog

log = logging.getLogger(__name__)

_INF = math.inf
_MAX_BACKOFF = 8  # reconnect waits grow to this multiple of LeasePolicy.reconnect_s


@dataclass(slots=True)
class _Waiter:
    tokens: int
    future: asyncio.Future[Permit]


@dataclass(slots=True)
class _Pool:
    """Leased capacity not yet spent; ``inf`` where the scope has no limit."""

    requests: float = 0.0
    tokens: float = 0.0
    expires_at: float = -_INF
    generation: int = 0


@dataclass(slots=True)
class _RateMeter:
    """Requests and tokens per second, exponentially weighted over ``tau`` seconds."""

    tau: float
    requests: float = 0.0
    tokens: float = 0.0
    at: float = field(default=-_INF)

    def add(self, now: float, requests: int, tokens: int) -> None:
        self._decay(now)
        self.requests += requests
        self.tokens += tokens

    def rates(self, now: float) -> tuple[float, float]:
        self._decay(now)
        return self.requests / self.tau, self.tokens / self.tau

    def _decay(self, now: float) -> None:
        if now > self.at:
            factor = math.exp((self.at - now) / self.tau) if self.at > -_INF else 0.0
            self.requests *= factor
            self.tokens *= factor
            self.at = now


class CoordinatedLimiter(Limiter):
    """Spends capacity leased from the scope's coordinator; see the module docstring."""

    waits_out_rate_limits = True

    def __init__(
        self,
        link: CoordinatorLink,
        *,
        client: str,
        adapters: int,
        run: str | None = None,
        limits: Limits | None = None,
        policy: LeasePolicy | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._link = link
        self._client = client
        self._run = run
        self._adapters = adapters
        self._limits = limits or Limits()
        self._policy = policy or LeasePolicy()
        self._clock = clock
        self._pool = _Pool()
        self._log = ReportLog()
        self._meter = _RateMeter(self._policy.horizon_s)
        self._waiters: deque[_Waiter] = deque()
        self._refill: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._paused_until = -_INF
        self._stopped: TaskError | None = None
        self._fallback: FallbackShare | None = None
        self._probe_out = False
        self._clients = adapters
        self._epoch = 0
        self._incarnation: str | None = None
        self._closed = False

    @property
    def in_fallback(self) -> bool:
        return self._fallback is not None

    # -- Limiter ----------------------------------------------------------------------

    async def acquire(self, tokens: int) -> Permit:
        if self._stopped is not None:
            raise ScopeStopped(self._stopped)
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_loop(), name=f"{self._client}-watch")
            self._watcher.add_done_callback(self._watch_done)
        now = self._clock()
        self._meter.add(now, 1, tokens)
        if not self._waiters and self._spendable(now, tokens):
            return self._spend(tokens)
        waiter = _Waiter(tokens, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._pump()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self._unspend(waiter.future.result())
            self._pump()
            raise

    def settle(self, permit: Permit, used_tokens: int) -> None:
        self._log.pending.used += used_tokens
        self._probe_out = False
        delta = permit.tokens - used_tokens
        if permit.generation == self._pool.generation:
            self._pool.tokens += delta
        else:
            self._log.pending.returned_tokens += delta
        self._pump()

    def observe(self, headers: Mapping[str, str]) -> None:
        """Keep the latest headers; they are read only when the next report is built."""
        self._log.pending.headers = headers
        self._log.pending.headers_at = self._clock()

    async def rate_limited(self, event: RateLimited) -> None:
        """Pause (or stop) here at once, and tell the coordinator now so everyone does."""
        now = self._clock()
        if event.fatal is not None:
            self._stop(event.fatal)
        else:
            self._paused_until = max(self._paused_until, now + event.pause_s)
        notice = await self._send_reports(self._log.outgoing(now, rate_limited=event))
        if notice is not None:
            self._apply(notice)

    async def close(self) -> None:
        """Stop background work, give back what the pool still holds, and tell the
        coordinator this adapter is leaving (its run's limits stop counting with it)."""
        self._closed = True
        for handle in (self._expiry, self._resume):
            if handle is not None:
                handle.cancel()
        tasks = [task for task in (self._refill, self._watcher) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._expire()
        await self._send_reports(self._log.outgoing(self._clock(), leaving=True))

    # -- spending ---------------------------------------------------------------------

    def _spendable(self, now: float, tokens: int) -> bool:
        if now < self._paused_until:
            return False
        if now >= self._pool.expires_at:
            self._expire()
            return False
        return self._pool.requests >= 1 and self._pool.tokens >= tokens

    def _spend(self, tokens: int) -> Permit:
        self._pool.requests -= 1
        self._pool.tokens -= tokens
        self._log.pending.sent += 1
        self._log.pending.reserved += tokens
        return Permit(tokens, self._pool.generation)

    def _unspend(self, permit: Permit) -> None:
        """A waiter was cancelled after its permit was granted: nothing was sent."""
        self._log.pending.sent -= 1
        self._log.pending.reserved -= permit.tokens
        if permit.generation == self._pool.generation:
            self._pool.requests += 1
            self._pool.tokens += permit.tokens
        else:
            self._log.pending.returned_requests += 1
            self._log.pending.returned_tokens += permit.tokens

    def _head(self) -> _Waiter | None:
        """The first waiter still waiting (cancelled ones are dropped on the way)."""
        while self._waiters and self._waiters[0].future.done():
            self._waiters.popleft()
        return self._waiters[0] if self._waiters else None

    def _pump(self) -> None:
        """Grant waiters from the pool in order, then ask for more if needed."""
        now = self._clock()
        while (head := self._head()) is not None and self._spendable(now, head.tokens):
            self._waiters.popleft()
            head.future.set_result(self._spend(head.tokens))
        if self._head() is not None and now < self._paused_until and self._resume is None:
            loop = asyncio.get_running_loop()
            self._resume = loop.call_at(loop.time() + self._paused_until - now, self._on_resume)
        self._maybe_refill(now)

    def _on_resume(self) -> None:
        self._resume = None
        self._pump()

    def _expire(self) -> None:
        """The pool's lease ran out: its remainder (or debt) goes back with the next call,
        and if the adapter has gone idle, with a call of its own (with its usage)."""
        pool = self._pool
        if pool.expires_at == -_INF:
            return  # already expired (or never leased)
        if not math.isinf(pool.requests):
            self._log.pending.returned_requests += int(pool.requests)
        if not math.isinf(pool.tokens):
            self._log.pending.returned_tokens += int(pool.tokens)
        self._log.pending.flush = not self._log.pending.empty()
        pool.requests = pool.tokens = 0.0
        pool.expires_at = -_INF
        pool.generation += 1

    def _on_expiry(self) -> None:
        self._expiry = None
        if self._clock() >= self._pool.expires_at:
            self._expire()
        self._pump()

    def _extend(self, expires_at: float) -> None:
        self._pool.expires_at = expires_at
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_at(loop.time() + expires_at - self._clock(), self._on_expiry)

    # -- refilling --------------------------------------------------------------------

    def _maybe_refill(self, now: float) -> None:
        if self._refill is None and not self._closed and self._refill_due(now):
            self._refill = asyncio.get_running_loop().create_task(self._refill_loop(), name=f"{self._client}-lease")
            self._refill.add_done_callback(self._refill_done)

    def _refill_due(self, now: float) -> bool:
        if self._stopped is not None or now < self._paused_until:
            return False
        if self._fallback is not None:
            return self._head() is not None
        if self._probe_out:
            return self._log.pending.flush
        return self._head() is not None or self._log.pending.flush

    async def _refill_loop(self) -> None:
        while self._refill_due(self._clock()):
            if self._fallback is not None:
                await self._draw_fallback(self._fallback)
            elif self._head() is None:
                await self._send_flush()
            else:
                await self._lease_once()
            self._pump()

    def _refill_done(self, task: asyncio.Task[None]) -> None:
        self._refill = None
        if task.cancelled():
            self._pump()
            return
        error = task.exception()
        if error is None:
            self._pump()
            return
        log.error("%s: leasing failed; failing the waiting requests", self._client, exc_info=error)
        while (head := self._head()) is not None:
            self._waiters.popleft()
            head.future.set_exception(error)

    def _demand(self, now: float) -> LeaseRequest:
        """Need: what the waiting requests lack. Want: ``horizon_s`` at the recent rate."""
        waiting = [waiter for waiter in self._waiters if not waiter.future.done()]
        rate_requests, rate_tokens = self._meter.rates(now)
        horizon = self._policy.horizon_s
        need_requests, want_requests = _ask(self._pool.requests, len(waiting), rate_requests * horizon)
        need_tokens, want_tokens = _ask(self._pool.tokens, sum(w.tokens for w in waiting), rate_tokens * horizon)
        first_tokens, _ = _ask(self._pool.tokens, waiting[0].tokens if waiting else 0, 0)
        return LeaseRequest(
            client=self._client,
            run=self._run,
            reports=self._log.outgoing(now),
            need_requests=need_requests,
            need_tokens=need_tokens,
            first_tokens=first_tokens,
            want_requests=want_requests,
            want_tokens=want_tokens,
        )

    async def _lease_once(self) -> None:
        self._spendable(self._clock(), 0)  # drop an expired pool before sizing the ask
        request = self._demand(self._clock())
        try:
            lease = await self._link.lease(request)
        except CoordinatorUnreachable as error:
            self._enter_fallback(error)
            return
        self._log.acked(request.reports)
        self._apply(lease.notice)
        if self._stopped is None:
            self._pool.requests = _merged(self._pool.requests, lease.requests)
            self._pool.tokens = _merged(self._pool.tokens, lease.tokens)
            self._probe_out = lease.probe
            self._extend(self._clock() + lease.ttl_s)

    async def _send_flush(self) -> None:
        notice = await self._send_reports(self._log.outgoing(self._clock()))
        if notice is not None:
            self._apply(notice)

    async def _send_reports(self, reports: list[Report]) -> Notice | None:
        """Report now; if the coordinator is away, the reports wait for the next call."""
        try:
            notice = await self._link.report(self._client, reports)
        except CoordinatorUnreachable as error:
            self._enter_fallback(error)
            return None
        self._log.acked(reports)
        return notice

    # -- coordinator state ------------------------------------------------------------

    def _apply(self, notice: Notice) -> None:
        if notice.incarnation != self._incarnation:
            self._incarnation, self._epoch = notice.incarnation, notice.epoch
        self._epoch = max(self._epoch, notice.epoch)
        if self._fallback is not None:
            self._fallback = None
            log.warning("%s: coordinator reachable again; leaving the fallback share", self._client)
        newly_limited = (notice.limits.rpm is not None and math.isinf(self._pool.requests)) or (
            notice.limits.tpm is not None and math.isinf(self._pool.tokens)
        )
        self._limits = notice.limits if notice.limits.known else self._limits
        self._clients = notice.clients
        if notice.stopped is not None:
            self._stop(notice.stopped)
            return
        if notice.paused_for_s > 0:
            self._paused_until = max(self._paused_until, self._clock() + notice.paused_for_s)
        if newly_limited:
            self._expire()  # an unlimited pool must not outlive the limit just learned
        self._pump()

    def _stop(self, error: TaskError) -> None:
        """insufficient_quota: every waiting and later request fails with it."""
        if self._stopped is not None:
            return
        self._stopped = error
        while (head := self._head()) is not None:
            self._waiters.popleft()
            head.future.set_exception(ScopeStopped(error))
        current = asyncio.current_task()
        for task in (self._refill, self._watcher):
            if task is not None and task is not current:
                task.cancel()

    def _enter_fallback(self, error: CoordinatorUnreachable) -> None:
        if self._fallback is not None or self._stopped is not None:
            return
        fallback = FallbackShare(
            self._limits, max(self._adapters, self._clients), clock=self._clock, burst_s=self._policy.initial_burst_s
        )
        self._fallback = fallback
        log.warning(
            "%s: coordinator unreachable (%s); limiting this adapter to rpm=%s tpm=%s until it answers",
            self._client, error, fallback.limits.rpm, fallback.limits.tpm,
        )
        if self._refill is not None and self._refill is not asyncio.current_task():
            self._refill.cancel()  # it may be stuck on the lost coordinator; restarted on the fallback

    async def _draw_fallback(self, fallback: FallbackShare) -> None:
        """Take what the first waiter lacks from the local share, as debt to report later."""
        now = self._clock()
        self._spendable(now, 0)
        head = self._head()
        if head is None:
            return
        need_requests, _ = _ask(self._pool.requests, 1, 0)
        need_tokens, _ = _ask(self._pool.tokens, head.tokens, 0)
        await fallback.take(need_requests, need_tokens)
        self._pool.requests += need_requests
        self._pool.tokens += need_tokens
        self._log.pending.returned_requests -= need_requests
        self._log.pending.returned_tokens -= need_tokens
        if self._pool.expires_at < self._clock() + self._policy.ttl_s:
            self._extend(self._clock() + self._policy.ttl_s)

    async def _watch_loop(self) -> None:
        """Keep one watch parked at the coordinator; a failed one means it is away."""
        delay = self._policy.reconnect_s
        while self._stopped is None:
            try:
                notice = await self._link.watch(self._client, self._epoch, self._incarnation)
            except CoordinatorUnreachable as error:
                self._enter_fallback(error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._policy.reconnect_s * _MAX_BACKOFF)
                continue
            delay = self._policy.reconnect_s
            self._apply(notice)

    def _watch_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: watching the coordinator failed", self._client, exc_info=task.exception())


def _ask(pool: float, waiting: float, target: float) -> tuple[int, int]:
    """(need, want) for one dimension: what the pool lacks for the waiting requests, and
    for the larger of them and the target. Nothing for a dimension without a limit."""
    if math.isinf(pool):
        return 0, 0
    need = max(0, math.ceil(waiting - pool))
    return need, max(need, math.ceil(target - pool))


def _merged(pool: float, granted: int | None) -> float:
    """Add a grant to the pool; ``None`` means unlimited, and a limit replaces an unlimited pool."""
    if granted is None:
        return _INF
    return (0.0 if math.isinf(pool) else pool) + granted
