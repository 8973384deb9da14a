"""The adapter: one connection to an endpoint, and the table of the tasks it runs.

``Adapter`` is a plain async class, testable without Ray; ``OpenAIAdapter`` is the same
class made a Ray async actor at the edge. The adapter is only the actor's surface: the
work per request lives in ``TaskExecutor`` and ``TaskTable``, plain classes, because Ray
wraps every method of an actor class (for tracing) and the per-request path should not
pay for that.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import ray
from pydantic import BaseModel

from actors.accounting import tokens
from actors.accounting.pricing import PriceTable
from actors.adapter.process_gc import tune_for_many_open_requests
from actors.adapter.settings import EndpointSettings
from actors.adapter.stats import AdapterStats
from actors.adapter.task_table import TaskTable
from actors.errors import ConfigError, ResultTimeout
from actors.models import DEFAULT_MODEL, AnyTask, TaskResult, TaskStatus, parse_task
from actors.ratelimit.limiter import NoLimit
from actors.ratelimit.specs import LimitSpec

if TYPE_CHECKING:
    from actors.adapter.batch_info import BatchInfo
    from actors.adapter.retry import RetryPolicy

TaskInput = Any  # a task model or a dict that validates as one (see actors.models.parse_task)
MAX_CONCURRENCY = 4096  # calls one actor serves at once: in-flight run()/get_result() waits
RESULTS_GATHERED_FOR_S = 0.1
"""After a result of a batch, how long ``stream_batch`` gathers others before it yields:
each yield is a Ray object, and at 20 ms an adapter's CPU per request in bench scene b
was 0.75 ms against 0.58 at 100 ms. A result waits at most this long, so a driver killed
with ``kill -9`` re-sends at most what finished in the last tenth of a second."""


class AdapterInfo(BaseModel):
    name: str
    model: str
    endpoint: str
    received: int  # tasks ever submitted
    in_flight: int  # submitted and not finished: running, or waiting for a slot
    running: int
    max_in_flight: int
    capabilities: list[str]
    node: str | None  # the Ray node of its process (hex id); None in a process not joined to Ray


class Adapter:
    """Sends tasks to one OpenAI-compatible endpoint with one retry layer and cost accounting."""

    def __init__(
        self,
        *,
        endpoint: EndpointSettings,
        model: str = DEFAULT_MODEL,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        prices: PriceTable | None = None,
        result_ttl_s: float = 600.0,
        limit: LimitSpec | None = None,
        max_in_flight: int = MAX_CONCURRENCY,
    ) -> None:
        """``endpoint``: where and how to send, resolved by the driver (this process's
        environment is never read for it). ``max_in_flight``: requests this adapter has open
        at once; tasks beyond it wait in its queue (status PENDING) and start, first come
        first served, as slots free up."""
        # The SDK, aiohttp and tenacity are imported here, in the adapter's process: a driver
        # imports this module only to name the actor class, and importing them cost its start
        # 0.4 s (bench/startup.py).
        from actors.adapter.batch_files import BatchFiles
        from actors.adapter.endpoints import SENDERS
        from actors.adapter.executor import TaskExecutor
        from actors.adapter.retry import RetryPolicy
        from actors.adapter.transport import Connection

        self.name = name or f"adapter-{uuid.uuid4().hex[:8]}"
        self.model = model
        self.endpoint = endpoint.display_url
        if not 1 <= max_in_flight <= MAX_CONCURRENCY:
            raise ConfigError(f"max_in_flight must be between 1 and {MAX_CONCURRENCY}, not {max_in_flight}")
        self._connection = Connection(endpoint, max_connections=max_in_flight)
        self._limiter = limit.build(self.name) if limit is not None else NoLimit()
        self._executor = TaskExecutor(
            self._connection, self._limiter, retry or RetryPolicy(), prices or PriceTable.default(), max_in_flight=max_in_flight, name=self.name
        )
        self._table = TaskTable(self.name, self._executor.execute, self._executor.never_started, ttl_s=result_ttl_s)
        self._batch_files = BatchFiles(self._connection.client, retry or RetryPolicy())
        self._batch_positions: dict[str, tuple[int, int]] = {}  # task id -> (batch tag, position)
        self._capabilities = sorted(SENDERS) + ["batch", "cancel", "stream"]

    def __repr__(self) -> str:
        return f"Adapter(name={self.name!r}, model={self.model!r}, endpoint={self.endpoint!r})"

    async def submit_task(self, task: TaskInput) -> str:
        """Validate and start a task; returns its id at once. Invalid tasks raise InvalidTask."""
        task_id, _ = self._table.start(self._prepare(task))
        return task_id

    async def get_status(self, task_id: str) -> TaskStatus:
        return self._table.get(task_id).status

    async def get_result(self, task_id: str, timeout: float | None = None) -> TaskResult:
        """Wait for the task and collect its result (the record is then evicted)."""
        runner = self._table.get(task_id).runner
        assert runner is not None
        done, _ = await asyncio.wait({runner}, timeout=timeout)
        if not done:
            raise ResultTimeout(task_id, timeout or 0.0)
        return self._table.collect(task_id)

    async def stream_result(self, task_id: str) -> AsyncIterator[str | TaskResult]:
        """Yield text deltas as they arrive, then the final TaskResult with usage and cost.

        A task submitted without ``stream=True`` yields its whole text once it is done.
        """
        record = self._table.get(task_id)
        while record.deltas is not None and (delta := await record.deltas.get()) is not None:
            yield delta
        result = await self.get_result(task_id)
        if not record.streamed and result.text:
            yield result.text
        yield result

    async def cancel_task(self, task_id: str) -> bool:
        """Cancel the task, closing its HTTP connection. False if it had already finished."""
        record = self._table.get(task_id)
        assert record.runner is not None
        if record.runner.done():
            return False
        record.runner.cancel()
        await asyncio.wait({record.runner})
        return record.status is TaskStatus.CANCELLED

    async def cancel_waiting(self) -> int:
        """Cancel every task still waiting for a slot (never sent), e.g. when a driver stops
        sending; running ones go on. Returns how many were cancelled."""
        return len(await self._table.cancel_pending())

    async def hand_back_waiting(self) -> list[tuple[int, int]]:
        """Cancel the tasks of tagged batches still waiting for a slot (never sent); each as
        (batch tag, position), so a dispatcher can send them to an adapter with free slots
        at once rather than when the rest of their batch comes back."""
        tags = dict(self._batch_positions)  # run_batch forgets them as soon as its batch is done
        return [tags[task_id] for task_id in await self._table.cancel_pending(among=tags)]

    async def cancel_batches(self, tags: list[int]) -> int:
        """Cancel what is still open of the tagged batches, running or waiting: a dispatcher
        whose stream of them broke (Ray: "may or may not have executed") has sent them
        elsewhere, and nobody will collect these. Returns how many were cancelled."""
        wanted = set(tags)
        open_ids = [task_id for task_id, (tag, _) in self._batch_positions.items() if tag in wanted]
        runners = [runner for task_id in open_ids if (runner := self._table.get(task_id).runner) and not runner.done()]
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        return len(runners)

    async def run(self, task: TaskInput) -> TaskResult:
        """Submit and wait in one call, so a driver can hold one ObjectRef per request."""
        return await self.get_result(await self.submit_task(task))

    async def run_batch(self, tasks: list[TaskInput], tag: int | None = None) -> list[TaskResult]:
        """Run several tasks concurrently and return their results in order."""
        results: dict[int, TaskResult] = {}
        async for finished in self.stream_batch(tasks, tag):
            results.update(finished)
        return [results[position] for position in range(len(tasks))]

    async def stream_batch(self, tasks: list[TaskInput], tag: int | None = None) -> AsyncIterator[list[tuple[int, TaskResult]]]:
        """Run several tasks concurrently and yield ``(position, result)`` pairs as they
        finish, those that finish together in one item: one actor call for many requests
        (a call costs far more CPU than a request), yet no result waits for a slow
        neighbour, so a driver can write each at once. Through Ray, a streaming generator.
        A ``tag`` lets ``hand_back_waiting`` name the batch's tasks."""
        prepared = [self._prepare(task) for task in tasks]  # all valid, or none is sent
        started = [self._table.start(task) for task in prepared]
        if tag is not None:
            self._batch_positions.update({task_id: (tag, position) for position, (task_id, _) in enumerate(started)})
        waiting = {record.runner: (position, task_id) for position, (task_id, record) in enumerate(started) if record.runner}
        try:
            while waiting:
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                done, _ = await asyncio.wait(waiting, timeout=RESULTS_GATHERED_FOR_S)  # at once if all are done
                finished = [waiting.pop(runner) for runner in done]
                yield [(position, self._table.collect(task_id)) for position, task_id in sorted(finished)]
        finally:
            for runner in waiting:  # the reader went away mid-batch: nobody will collect these
                runner.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
            if tag is not None:
                for task_id, _ in started:
                    self._batch_positions.pop(task_id, None)

    async def batch_upload_part(self, upload: str, data: bytes) -> None:
        """Batch API: append a part of the input file ``upload`` names (32 hex digits) to its
        scratch copy on this node; the driver sends a file in parts, in order."""
        await self._batch_files.add_part(upload, data)

    async def batch_upload(self, upload: str, filename: str) -> str:
        """Batch API: send the parts received for ``upload`` as one file (purpose ``batch``); its id."""
        return await self._batch_files.upload(upload, filename)

    async def batch_submit(self, input_file_id: str, endpoint: str, metadata: dict[str, str], since: int) -> BatchInfo:
        """Batch API: the batch of an uploaded file, found if one was created since ``since``
        (Unix seconds), else created: a submission is never made twice."""
        return await self._batch_files.submit(input_file_id, endpoint, metadata, since)

    async def batch_retrieve(self, batch_id: str) -> BatchInfo:
        return await self._batch_files.retrieve(batch_id)

    async def batch_download(self, download: str, file_id: str) -> None:
        """Batch API: start fetching a file's content into a scratch copy ``download`` (32 hex digits) names."""
        await self._batch_files.start_download(download, file_id)

    async def batch_download_part(self, download: str, offset: int) -> bytes:
        """Batch API: the fetched content from ``offset``, as much as has come; b"" at its end."""
        return await self._batch_files.read_download(download, offset)

    async def batch_download_end(self, download: str) -> None:
        await self._batch_files.end_download(download)

    async def stats(self) -> AdapterStats:
        return self._executor.stats.model_copy()

    async def status(self) -> AdapterInfo:
        return AdapterInfo(
            name=self.name,
            model=self.model,
            endpoint=self.endpoint,
            received=self._table.received,
            in_flight=self._table.in_flight,
            running=self._table.running,
            max_in_flight=self._executor.max_in_flight,
            capabilities=self._capabilities,
            node=ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
        )

    async def close(self) -> None:
        """Cancel what is still running and close the HTTP connections."""
        await self._table.cancel_all()
        await self._limiter.close()
        await self._connection.close()
        self._batch_files.close()

    def _prepare(self, task: TaskInput) -> AnyTask:
        """The validated task, with this adapter's model unless the task names one."""
        parsed = parse_task(task)
        if parsed.kind != "embeddings" and "model" not in parsed.model_fields_set:
            parsed = parsed.model_copy(update={"model": self.model})
        return parsed


@ray.remote(max_concurrency=MAX_CONCURRENCY)  # type: ignore[call-overload]  # Ray's stubs omit max_concurrency
class OpenAIAdapter(Adapter):
    """The adapter as a Ray actor (same arguments as ``Adapter``). It has its worker process
    to itself, so it tunes that process's garbage collector for many short-lived requests,
    and loads the tokenizer once it is up, while the run's other parts start."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        tune_for_many_open_requests()
        super().__init__(*args, **kwargs)
        tokens.load_in_background()
