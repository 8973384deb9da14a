"""The adapter: one connection to an endpoint and a table of the tasks it runs.

``Adapter`` is a plain async class, testable without Ray; ``OpenAIAdapter`` is the same
class made a Ray async actor at the edge. Each task is an ``asyncio.Task`` in the table
and ends in exactly one terminal state; its record is evicted when the result is
collected, or ``result_ttl_s`` after it finished (checked as new tasks arrive), so a long
run keeps memory flat.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai
import ray
from pydantic import BaseModel, SecretStr

from actors.connection import Connection
from actors.endpoints import SENDERS, Reply
from actors.errors import ConfigError, ResultTimeout, ScopeStopped, TaskNotFound
from actors.limiter import LimitSpec, NoLimit
from actors.models import DEFAULT_MODEL, TaskError, TaskResult, TaskStatus, Usage, parse_task
from actors.pricing import PriceTable
from actors.retry import RetryPolicy, describe_error, is_fatal_quota

log = logging.getLogger(__name__)

AnyTask = Any  # a task model or a dict that validates as one (see actors.models.parse_task)
MAX_CONCURRENCY = 4096  # calls one actor serves at once: in-flight run()/get_result() waits


class AdapterStats(BaseModel):
    requests: int = 0  # HTTP attempts sent
    retries: int = 0
    rate_limited: int = 0  # 429 answers, fatal quota included
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class AdapterInfo(BaseModel):
    name: str
    model: str
    endpoint: str
    in_flight: int
    capabilities: list[str]


@dataclass
class _Record:
    task: Any
    runner: asyncio.Task[TaskResult] | None = None
    status: TaskStatus = TaskStatus.PENDING
    attempts: int = 0
    deltas: asyncio.Queue[str | None] | None = None  # only for stream=True tasks
    streamed: bool = False
    result: TaskResult | None = None


class Adapter:
    """Sends tasks to one OpenAI-compatible endpoint with one retry layer and cost accounting."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | SecretStr | None = None,
        model: str = DEFAULT_MODEL,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        prices: PriceTable | None = None,
        result_ttl_s: float = 600.0,
        limit: LimitSpec | None = None,
    ) -> None:
        key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key or os.environ.get("OPENAI_API_KEY", ""))
        if not key.get_secret_value():
            raise ConfigError("no API key: pass api_key= or set OPENAI_API_KEY where the adapter runs")
        client = openai.AsyncOpenAI(
            base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
            api_key=key.get_secret_value(),
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(),
        )
        self._connection = Connection(client, max_connections=MAX_CONCURRENCY)
        self.name = name or f"adapter-{uuid.uuid4().hex[:8]}"
        self.model = model
        self._limiter = limit.build(self.name) if limit is not None else NoLimit()
        self._retry = retry or RetryPolicy()
        self._prices = prices or PriceTable.default()
        self._ttl_s = result_ttl_s
        self._tasks: dict[str, _Record] = {}
        self._uncollected: dict[str, float] = {}  # finished, not yet collected: id -> eviction time
        self._ids = itertools.count()
        self._stats = AdapterStats()

    def __repr__(self) -> str:
        return f"Adapter(name={self.name!r}, model={self.model!r}, endpoint={self.endpoint!r})"

    @property
    def endpoint(self) -> str:
        """The base URL with any credentials or query string removed."""
        parts = urlsplit(str(self._connection.client.base_url))
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))

    async def submit_task(self, task: AnyTask) -> str:
        """Validate and start a task; returns its id at once. Invalid tasks raise InvalidTask."""
        self._evict_expired()
        parsed = parse_task(task)
        if parsed.kind != "embeddings" and "model" not in parsed.model_fields_set:
            parsed = parsed.model_copy(update={"model": self.model})
        task_id = f"{self.name}-{next(self._ids)}"
        record = _Record(task=parsed, deltas=asyncio.Queue() if getattr(parsed, "stream", False) else None)
        self._tasks[task_id] = record
        record.runner = asyncio.create_task(self._execute(task_id, record), name=task_id)
        return task_id

    async def get_status(self, task_id: str) -> TaskStatus:
        return self._record(task_id).status

    async def get_result(self, task_id: str, timeout: float | None = None) -> TaskResult:
        """Wait for the task and collect its result (the record is then evicted)."""
        record = self._record(task_id)
        assert record.runner is not None
        done, _ = await asyncio.wait({record.runner}, timeout=timeout)
        if not done:
            raise ResultTimeout(task_id, timeout or 0.0)
        return self._collect(task_id, record)

    async def stream_result(self, task_id: str) -> AsyncIterator[str | TaskResult]:
        """Yield text deltas as they arrive, then the final TaskResult with usage and cost.

        A task submitted without ``stream=True`` yields its whole text once it is done.
        """
        record = self._record(task_id)
        while record.deltas is not None and (delta := await record.deltas.get()) is not None:
            yield delta
        result = await self.get_result(task_id)
        if not record.streamed and result.text:
            yield result.text
        yield result

    async def cancel_task(self, task_id: str) -> bool:
        """Cancel the task, closing its HTTP connection. False if it had already finished."""
        record = self._record(task_id)
        assert record.runner is not None
        if record.runner.done():
            return False
        record.runner.cancel()
        await asyncio.wait({record.runner})
        return record.status is TaskStatus.CANCELLED

    async def run(self, task: AnyTask) -> TaskResult:
        """Submit and wait in one call, so a driver can hold one ObjectRef per request."""
        return await self.get_result(await self.submit_task(task))

    async def run_batch(self, tasks: list[AnyTask]) -> list[TaskResult]:
        """Run several tasks concurrently and return their results in order: one actor call
        (and one ObjectRef) for many requests, since a call costs far more CPU than a request."""
        parsed = [parse_task(task) for task in tasks]  # all valid, or none is sent
        task_ids = [await self.submit_task(task) for task in parsed]
        records = [self._tasks[task_id] for task_id in task_ids]
        await asyncio.wait([record.runner for record in records if record.runner])
        return [self._collect(task_id, record) for task_id, record in zip(task_ids, records)]

    async def stats(self) -> AdapterStats:
        return self._stats.model_copy()

    async def status(self) -> AdapterInfo:
        return AdapterInfo(
            name=self.name,
            model=self.model,
            endpoint=self.endpoint,
            in_flight=sum(not record.status.is_terminal for record in self._tasks.values()),
            capabilities=sorted(SENDERS) + ["cancel", "stream"],
        )

    async def close(self) -> None:
        """Cancel what is still running and close the HTTP connections."""
        runners = [record.runner for record in self._tasks.values() if record.runner and not record.runner.done()]
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        await self._limiter.close()
        await self._connection.close()

    def _collect(self, task_id: str, record: _Record) -> TaskResult:
        self._evict(task_id)
        assert record.result is not None, "a finished runner always leaves a result"
        return record.result

    def _record(self, task_id: str) -> _Record:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise TaskNotFound(task_id) from None

    async def _execute(self, task_id: str, record: _Record) -> TaskResult:
        started = time.monotonic()
        record.status = TaskStatus.RUNNING
        try:
            reply = await self._send_with_retries(task_id, record)
        except asyncio.CancelledError:
            self._finish(task_id, record, started, error=TaskError(code="cancelled", message="cancelled by request"))
            raise
        except openai.OpenAIError as error:
            self._finish(task_id, record, started, error=describe_error(error))
        except ScopeStopped as stopped:
            self._finish(task_id, record, started, error=stopped.error)
        except Exception as error:  # a bug of ours: recorded with its traceback, never lost
            log.exception("%s: unexpected error", task_id)
            self._finish(task_id, record, started, error=TaskError(code="internal_error", message=repr(error)))
        else:
            self._finish(task_id, record, started, reply=reply)
        assert record.result is not None
        return record.result

    async def _send_with_retries(self, task_id: str, record: _Record) -> Reply:
        task = record.task
        send = SENDERS[task.kind]

        def on_delta(text: str) -> None:
            assert record.deltas is not None, "only stream=True tasks produce deltas"
            record.streamed = True
            record.deltas.put_nowait(text)

        async for attempt in self._retry.retrying(task.custom_id, may_retry=lambda: not record.streamed):
            with attempt:
                async with self._limiter.attempt(task) as limited:  # waits for the rate limit
                    record.attempts += 1
                    self._stats.requests += 1
                    self._stats.retries += record.attempts > 1
                    try:
                        reply = await send(self._connection, task, on_delta)
                    except openai.RateLimitError as error:
                        self._stats.rate_limited += 1
                        if is_fatal_quota(error):
                            log.error("%s: insufficient_quota: the account has no credit left; not retrying", task.custom_id)
                        raise
                    limited.succeeded(reply)
                    return reply
        raise AssertionError("tenacity either returns, or re-raises the last error")

    def _finish(
        self, task_id: str, record: _Record, started: float, *, reply: Reply | None = None, error: TaskError | None = None
    ) -> None:
        task = record.task
        status = TaskStatus.COMPLETED if reply else TaskStatus.CANCELLED if error and error.code == "cancelled" else TaskStatus.FAILED
        usage = reply.usage if reply else Usage()
        cost = self._prices.cost(reply.model if reply else task.model, usage) if reply else 0.0
        record.result = TaskResult(
            custom_id=task.custom_id,
            status=status,
            text=reply.text if reply else None,
            body=reply.body if reply else None,
            finish_reason=reply.finish_reason if reply else None,
            usage=usage,
            cost_usd=cost,
            model=reply.model if reply else task.model,
            attempts=record.attempts,
            latency_s=time.monotonic() - started,
            request_id=reply.request_id if reply else None,
            error=error,
        )
        record.status = status
        if record.deltas is not None:
            record.deltas.put_nowait(None)
        self._count(record.result)
        self._uncollected[task_id] = time.monotonic() + self._ttl_s

    def _evict(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)
        self._uncollected.pop(task_id, None)

    def _evict_expired(self) -> None:
        """Drop finished records nobody collected within the TTL. The dict is in finish
        order, so only its expired head is visited: no timer per task."""
        now = time.monotonic()
        while self._uncollected:
            task_id, deadline = next(iter(self._uncollected.items()))
            if deadline > now:
                return
            self._evict(task_id)

    def _count(self, result: TaskResult) -> None:
        stats = self._stats
        stats.completed += result.status is TaskStatus.COMPLETED
        stats.failed += result.status is TaskStatus.FAILED
        stats.cancelled += result.status is TaskStatus.CANCELLED
        stats.prompt_tokens += result.usage.prompt_tokens
        stats.completion_tokens += result.usage.completion_tokens
        stats.cost_usd += result.cost_usd or 0.0


OpenAIAdapter = ray.remote(max_concurrency=MAX_CONCURRENCY)(Adapter)
