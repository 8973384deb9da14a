"""Rate budget for one limit scope (endpoint + key + model): RPM and TPM buckets, granted in order.

Pure and loop-local: no Ray, no I/O. The coordinator actor owns one ``RateBudget`` per
scope and hands out leases through ``acquire``/``refund``; an adapter limited on its own
(or cut off from its coordinator) uses one directly. Time comes from an injected clock so
tests run on virtual time; waiters are woken by a single ``loop.call_at`` handle for the
head of the queue, never by polling.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.ratelimit.bucket import EPS, Clock, TokenBucket
from actors.ratelimit.ledger import LEDGER_S, GrantLedger

ErrorFactory = Callable[[], BaseException]


def _check_burst(burst_s: float) -> None:
    if not 0 < burst_s <= 60:
        raise ValueError(f"burst_s must be in (0, 60], got {burst_s}")


def _check_amounts(*amounts: float) -> None:
    if any(a < 0 for a in amounts):
        raise ValueError(f"amounts must be non-negative, got {amounts}")


def _up_to(amount: int, bucket: TokenBucket | None) -> int:
    """As much of ``amount`` as the bucket holds now, in whole units (all of it if unlimited)."""
    if bucket is None:
        return amount
    return max(0, min(amount, math.floor(bucket.level() + EPS)))


@dataclass(eq=False)
class _Waiter:
    requests: int
    tokens: int
    future: asyncio.Future[None]


class RateBudget:
    """RPM + TPM buckets and a shared 429 pause, granted to waiters in FIFO order.

    ``None`` for a limit means that dimension is unlimited. Only the head of the queue
    is ever considered, so a large request is never starved by smaller later ones.
    ``full=False`` starts with nothing to give, for a budget that cannot know what was
    spent just before it existed (a restarted coordinator, a fallback share).

    ``burst_s`` is the window the server enforces its per-minute limits over: a bucket
    holds that much of the limit (60: a minute's burst at once; 1: OpenAI's per-second
    slices) and refills at the limit either way. ``headroom_s`` holds the buckets that many
    seconds of refill below that window (never below half of it). A server starts
    refilling only when our first request reaches it, up to a round trip after we granted
    it; after a spell at capacity a full bucket of ours would be ahead of the server's by
    that much, and the burst that follows would be rejected.
    """

    def __init__(
        self,
        *,
        rpm: float | None,
        tpm: float | None,
        clock: Clock = time.monotonic,
        loop: asyncio.AbstractEventLoop | None = None,
        full: bool = True,
        headroom_s: float = 0.0,
        burst_s: float = 60.0,
    ) -> None:
        if not 0 <= headroom_s < 60:
            raise ValueError(f"headroom_s must be in [0, 60), got {headroom_s}")
        _check_burst(burst_s)
        self._clock = clock
        self._loop = loop
        self._headroom_s = headroom_s
        self._burst_s = burst_s
        self._rpm = self._new_bucket(rpm, full)
        self._tpm = self._new_bucket(tpm, full)
        self._queue: deque[_Waiter] = deque()
        self._wake: asyncio.TimerHandle | None = None
        self._paused_until: float | None = None
        self._shut: ErrorFactory | None = None
        self._granted_requests = 0
        self._granted_tokens = 0
        self._refunded_requests = 0
        self._refunded_tokens = 0
        self._ledger = GrantLedger(clock)

    def _new_bucket(self, per_minute: float | None, full: bool = True) -> TokenBucket | None:
        if per_minute is None:
            return None
        return TokenBucket(self._capacity(per_minute), per_minute / 60.0, clock=self._clock, full=full)

    def _capacity(self, per_minute: float) -> float:
        """``burst_s`` of the limit less the headroom, but at least half of it and one unit."""
        window = max(self._burst_s - self._headroom_s, self._burst_s / 2)
        return max(1.0, per_minute * window / 60.0)

    # -- granting ---------------------------------------------------------------------

    async def acquire(self, requests: int, tokens: int) -> None:
        """Wait until ``requests`` and ``tokens`` are granted, behind earlier waiters.

        On cancellation nothing is kept: a grant that raced the cancel is given back.
        After ``shut`` it raises the shut error instead of waiting.
        """
        if self.try_acquire(requests, tokens):
            return
        waiter = _Waiter(requests, tokens, self._bind_loop().create_future())
        self._queue.append(waiter)
        if self._queue[0] is waiter:
            self._dispatch()
        try:
            await waiter.future
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise

    def try_acquire(self, requests: int, tokens: int) -> bool:
        """Grant now or not at all; never jumps ahead of queued waiters."""
        _check_amounts(requests, tokens)
        if self._shut is not None:
            raise self._shut()
        if self._queue or self._wait_time(requests, tokens) > 0:
            return False
        self._grant(requests, tokens)
        return True

    def take_available(self, requests: int, tokens: int) -> tuple[int, int]:
        """Take up to the amounts, as much of each as is there now; nothing while others
        wait, during a pause, or after ``shut``. Returns what was taken."""
        _check_amounts(requests, tokens)
        if self._shut is not None or self._queue or self._pause_left() > 0:
            return 0, 0
        requests = _up_to(requests, self._rpm)
        tokens = _up_to(tokens, self._tpm)
        if requests or tokens:
            self._grant(requests, tokens)
        return requests, tokens

    def refund(self, requests: int, tokens: int) -> None:
        """Return capacity granted but not used (e.g. the unused part of a lease)."""
        _check_amounts(requests, tokens)
        self._give_back(requests, tokens)
        self._refunded_requests += requests
        self._refunded_tokens += tokens
        self._note()
        self._dispatch()

    def charge(self, requests: int, tokens: int) -> None:
        """Take capacity spent elsewhere without waiting; it may leave debt (fallback spending)."""
        _check_amounts(requests, tokens)
        self._grant(requests, tokens)
        self._dispatch()

    def shut(self, error: ErrorFactory) -> None:
        """Grant nothing ever again: queued and future waiters raise ``error()``."""
        self._shut = error
        self._cancel_wake()
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(error())

    def reopen(self) -> None:
        """Undo ``shut``: grant again (a new run after the cause was fixed)."""
        self._shut = None

    def reconcile(self, reserved_tokens: int, used_tokens: int) -> None:
        """Settle an estimate: refund the surplus, or charge the overrun as debt."""
        _check_amounts(reserved_tokens, used_tokens)
        surplus = reserved_tokens - used_tokens
        if surplus > 0:
            self._give_back(0, surplus)
            self._refunded_tokens += surplus
        elif surplus < 0:
            if self._tpm is not None:
                self._tpm.take(-surplus)
            self._granted_tokens -= surplus
        self._note()
        self._dispatch()

    # -- server feedback --------------------------------------------------------------

    def pause_until(self, deadline: float) -> None:
        """Grant nothing before ``deadline`` (clock time); only ever extends a pause."""
        if self._paused_until is None or deadline > self._paused_until:
            self._paused_until = deadline
            self._dispatch()

    @property
    def paused_until(self) -> float | None:
        """End of the active pause, or None when not paused."""
        return self._paused_until if self._pause_left() > 0 else None

    def set_limits(self, rpm: float | None = None, tpm: float | None = None) -> None:
        """Adopt limits learned from ``x-ratelimit-limit-*``; None leaves a dimension as is."""
        if rpm is not None:
            self._rpm = self._updated(self._rpm, rpm)
        if tpm is not None:
            self._tpm = self._updated(self._tpm, tpm)
        self._dispatch()

    @property
    def burst_s(self) -> float:
        return self._burst_s

    def set_burst_s(self, burst_s: float) -> None:
        """Adopt a newly learned enforcement window: each bucket is resized keeping what it
        lacks, so a scope that learns it may burst a minute can do so at once."""
        _check_burst(burst_s)
        self._burst_s = burst_s
        for bucket in (self._rpm, self._tpm):
            if bucket is not None:
                bucket.resize(self._capacity(bucket.refill_per_s * 60))
        self._dispatch()

    def _updated(self, bucket: TokenBucket | None, per_minute: float) -> TokenBucket | None:
        if bucket is None:
            return self._new_bucket(per_minute)
        bucket.set_limit(self._capacity(per_minute), per_minute / 60.0)
        return bucket

    def observe_remaining(self, requests: int | None, tokens: int | None, *, age_s: float = 0.0) -> None:
        """Trust ``x-ratelimit-remaining-*`` when it is lower than our own estimate.

        The server counted them ``age_s`` ago: since then its bucket refilled and we handed
        out (net) what the ledger says, so the bound is remaining + refill - taken since.
        Without another client on the key that bound is never below our level (we deduct
        capacity before the server sees it), so only a real shortfall tightens.
        """
        if age_s > LEDGER_S:
            return
        taken_requests, taken_tokens = self._ledger.taken_since(self._clock() - age_s)
        if requests is not None and self._rpm is not None:
            self._rpm.clamp_to(requests + self._rpm.refill_per_s * age_s - taken_requests)
        if tokens is not None and self._tpm is not None:
            self._tpm.clamp_to(tokens + self._tpm.refill_per_s * age_s - taken_tokens)
        self._dispatch()

    def snapshot(self) -> dict[str, Any]:
        """Point-in-time view for metrics and debugging."""
        return {
            "rpm": self._rpm.refill_per_s * 60 if self._rpm else None,
            "tpm": self._tpm.refill_per_s * 60 if self._tpm else None,
            "burst_s": self._burst_s,
            "requests_available": self._rpm.level() if self._rpm else None,
            "tokens_available": self._tpm.level() if self._tpm else None,
            "queued": len(self._queue),
            "paused_until": self.paused_until,
            "granted_requests": self._granted_requests,
            "granted_tokens": self._granted_tokens,
            "refunded_requests": self._refunded_requests,
            "refunded_tokens": self._refunded_tokens,
        }

    # -- internals --------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        """Pin the budget to the first loop that waits on it; wake handles live there."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("RateBudget is bound to a different event loop")
        return loop

    def _pause_left(self) -> float:
        if self._paused_until is None:
            return 0.0
        left = self._paused_until - self._clock()
        if left <= 0:
            self._paused_until = None
            return 0.0
        return left

    def _wait_time(self, requests: int, tokens: int) -> float:
        """Seconds until both buckets can give the amounts and no pause is active."""
        wait = self._pause_left()
        if self._rpm is not None:
            wait = max(wait, self._rpm.time_until(requests))
        if self._tpm is not None:
            wait = max(wait, self._tpm.time_until(tokens))
        return wait

    def _grant(self, requests: int, tokens: int) -> None:
        if self._rpm is not None:
            self._rpm.take(requests)
        if self._tpm is not None:
            self._tpm.take(tokens)
        self._granted_requests += requests
        self._granted_tokens += tokens
        self._note()

    def _note(self) -> None:
        self._ledger.note(self._granted_requests - self._refunded_requests, self._granted_tokens - self._refunded_tokens)

    def _give_back(self, requests: int, tokens: int) -> None:
        if self._rpm is not None:
            self._rpm.give(requests)
        if self._tpm is not None:
            self._tpm.give(tokens)

    def _abandon(self, waiter: _Waiter) -> None:
        """Undo a cancelled waiter: leave the queue, or return a grant it never used."""
        if waiter.future.cancelled():
            if waiter in self._queue:
                self._queue.remove(waiter)
        else:
            self._give_back(waiter.requests, waiter.tokens)
            self._granted_requests -= waiter.requests
            self._granted_tokens -= waiter.tokens
            self._note()
        self._dispatch()

    def _dispatch(self) -> None:
        """Grant waiters from the head while possible; schedule one wake for the rest.

        Called after every state change, so the single timer is always for the head's
        current earliest start; an early wake just recomputes.
        """
        self._cancel_wake()
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # cancelled while queued, not yet cleaned up
                self._queue.popleft()
                continue
            wait = self._wait_time(head.requests, head.tokens)
            if wait > 0:
                self._schedule_wake(wait)
                return
            self._queue.popleft()
            self._grant(head.requests, head.tokens)
            head.future.set_result(None)

    def _schedule_wake(self, delay: float) -> None:
        assert self._loop is not None  # a queued waiter has bound the loop
        self._wake = self._loop.call_at(self._loop.time() + delay, self._on_wake)

    def _on_wake(self) -> None:
        self._wake = None
        self._dispatch()

    def _cancel_wake(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
