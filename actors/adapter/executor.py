"""One task from its first attempt to its TaskResult: rate limit, retries, usage and cost.

Most requests succeed at once, so the first attempt runs outside tenacity's retry loop,
whose per-request machinery cost about a tenth of an adapter's CPU; a failure enters
the loop, which replays it as attempt 1 and decides, waits and retries from there, so
every failure goes through the one retry policy.

A 429 for the rate limit is not a failure while a coordinator governs the scope: the scope
pauses, and the request waits its turn and goes again, within the same attempt. Only Ctrl-C or the run's deadline ends that wait. Attempts are
for real failures (5xx, connection errors, timeouts); ``TaskResult.attempts`` counts every
request sent.

At most ``max_in_flight`` tasks run at once; the rest wait their turn, first come first
served, as PENDING. A driver can then hand an adapter a little more than it may send, so
a finished request's slot is refilled at once instead of after a round trip to the driver.
"""

from __future__ import annotations

import asyncio
import logging
import time

import openai

from actors.accounting.pricing import PriceTable
from actors.adapter.attempt import attempt_under
from actors.adapter.endpoints import SENDERS, OnDelta, Reply
from actors.adapter.retry import RetryPolicy, describe_error, is_fatal_quota, waits_out
from actors.adapter.stats import AdapterStats
from actors.adapter.task_table import TaskRecord
from actors.adapter.transport import Connection, permanent_cause
from actors.errors import ScopeStopped, TaskError
from actors.models import TaskResult, TaskStatus, Usage
from actors.ratelimit.limiter import Limiter
from actors.ratelimit.protocol import RateLimited
from actors.telemetry import AdapterMetrics

log = logging.getLogger(__name__)

STOP_AFTER = 3
"""Consecutive requests that show the scope cannot work after which it stops: 401/403
answers (the key is revoked or wrong: ``key_rejected``), or failures no wait can fix on the
way there (an untrusted certificate, a host that does not exist, a proxy that refuses us:
``endpoint_unreachable``). A million requests should not each learn it."""


class TaskExecutor:
    """Runs task records against one connection under one limiter and retry policy."""

    def __init__(
        self, connection: Connection, limiter: Limiter, retry: RetryPolicy, prices: PriceTable, *, max_in_flight: int, name: str = "adapter"
    ) -> None:
        """``name``: the adapter's, which its in-flight gauge is tagged with."""
        self._connection = connection
        self._limiter = limiter
        self._retry = retry
        self._prices = prices
        self._slots = asyncio.Semaphore(max_in_flight)
        self._stop_streak: tuple[str, int] | None = None
        """The failure the last requests in a row ended with, and how many (see STOP_AFTER)."""
        self.max_in_flight = max_in_flight
        self.stats = AdapterStats()
        self._metrics = AdapterMetrics(name)

    async def execute(self, record: TaskRecord) -> None:
        """Wait for a slot, then run the task; it always ends with ``record.result`` set,
        cancelled ones included (those cancelled while waiting were never sent)."""
        started: float | None = None
        try:
            async with self._slots:
                started = time.monotonic()
                self._metrics.sending()
                record.status = TaskStatus.RUNNING
                reply = await self._send(record)
        except asyncio.CancelledError:
            if started is None:
                self.never_started(record)
            else:
                self._finish(record, started, error=TaskError(code="cancelled", message="cancelled by request"))
            raise
        except openai.OpenAIError as error:
            self._finish(record, started, error=describe_error(error))
        except ScopeStopped as stopped:
            self._finish(record, started, error=stopped.error)
        except Exception as error:  # a bug of ours: recorded with its traceback, never lost
            log.exception("%s: unexpected error", record.task.custom_id)
            self._finish(record, started, error=TaskError(code="internal_error", message=repr(error)))
        else:
            self._finish(record, started, reply=reply)

    def never_started(self, record: TaskRecord) -> None:
        """Finish a task cancelled before it had a slot: it was never sent."""
        self._finish(record, None, error=TaskError(code="cancelled", message="cancelled by request before it was sent"))

    async def _send(self, record: TaskRecord) -> Reply:
        try:
            return await self._attempt(record)
        except Exception as error:  # CancelledError is not an Exception: it is never retried
            failure = error
        async for attempt in self._retry.retrying(record.task.custom_id, may_retry=lambda: not record.streamed):
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise failure  # the first attempt's, replayed for the policy to judge
                return await self._attempt(record)
        raise AssertionError("tenacity either returns, or re-raises the last error")

    async def _attempt(self, record: TaskRecord) -> Reply:
        """One attempt: sent again after each 429 the limiter waits out."""
        while True:
            try:
                return await self._send_once(record)
            except openai.RateLimitError as error:
                if not (self._limiter.waits_out_rate_limits and waits_out(error)):
                    raise
                log.debug("%s: 429; waiting for the scope's pause, then sending again", record.task.custom_id)

    async def _send_once(self, record: TaskRecord) -> Reply:
        task = record.task
        async with attempt_under(self._limiter, task) as limited:  # waits for the rate limit
            record.attempts += 1
            self.stats.requests += 1
            if record.attempts > 1:
                self.stats.retries += 1
                self._metrics.retried(task.model)
            try:
                reply = await SENDERS[task.kind](self._connection, task, _delta_sink(record))
            except openai.RateLimitError as error:
                self.stats.rate_limited += 1
                self._metrics.rate_limited(task.model)
                if is_fatal_quota(error):
                    log.error("%s: insufficient_quota: the account has no credit left; not retrying", task.custom_id)
                raise
            except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
                reason = describe_error(error)
                await self._count_towards_stop("key_rejected", f"answered {reason.status_code} ({reason.message}); the key was rejected")
                raise
            except openai.APIConnectionError as error:
                if permanent_cause(error) is not None:
                    reason = describe_error(error)
                    await self._count_towards_stop("endpoint_unreachable", f"failed with {reason.code} ({reason.message})")
                raise
            self._stop_streak = None
            limited.succeeded(reply)
            return reply

    async def _count_towards_stop(self, code: str, what: str) -> None:
        """Count one more request in a row that failed as ``code``; at ``STOP_AFTER``, stop
        the scope for every adapter, as ``insufficient_quota`` does: what waits is never sent."""
        count = self._stop_streak[1] + 1 if self._stop_streak is not None and self._stop_streak[0] == code else 1
        self._stop_streak = (code, count)
        if count == STOP_AFTER:
            message = f"{STOP_AFTER} requests in a row {what}"
            log.error("%s; nothing more is sent", message)
            await self._limiter.rate_limited(RateLimited(pause_s=0.0, fatal=TaskError(code=code, message=message)))

    def _finish(self, record: TaskRecord, started: float | None, *, reply: Reply | None = None, error: TaskError | None = None) -> None:
        task = record.task
        if reply is not None:
            status = TaskStatus.COMPLETED
        else:
            status = TaskStatus.CANCELLED if error is not None and error.code == "cancelled" else TaskStatus.FAILED
        usage = reply.usage if reply else Usage()
        latency_s = None if started is None else time.monotonic() - started
        record.result = TaskResult(
            custom_id=task.custom_id,
            status=status,
            text=reply.text if reply else None,
            body=reply.body if reply else None,
            finish_reason=reply.finish_reason if reply else None,
            usage=usage,
            cost_usd=self._prices.cost(reply.model, usage) if reply else 0.0,
            model=reply.model if reply else task.model,
            attempts=record.attempts,
            latency_s=latency_s or 0.0,
            request_id=reply.request_id if reply else None,
            error=error,
        )
        record.status = status
        if record.deltas is not None:
            record.deltas.put_nowait(None)
        self.stats.count(record.result)
        self._metrics.finished(task.model, record.result, latency_s)


def _delta_sink(record: TaskRecord) -> OnDelta:
    """Where a streamed answer's text goes as it arrives: the record's queue."""
    deltas = record.deltas
    if deltas is None:
        return _no_deltas

    def on_delta(text: str) -> None:
        record.streamed = True
        deltas.put_nowait(text)

    return on_delta


def _no_deltas(text: str) -> None:
    raise AssertionError("only stream=True tasks produce deltas")
