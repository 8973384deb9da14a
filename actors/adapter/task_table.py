"""An adapter's table of tasks: what runs, what finished, and what is waiting to be collected.

Each task is an ``asyncio.Task`` with a record that ends in exactly one terminal state.
A record is evicted when its result is collected, or ``ttl_s`` after it finished if
nobody collects it, checked as new tasks arrive, so a long run keeps memory flat
without a timer per task.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Coroutine
from typing import Any
from dataclasses import dataclass

from actors.errors import TaskNotFound
from actors.models import AnyTask, TaskResult, TaskStatus


@dataclass(eq=False, slots=True)
class TaskRecord:
    """One task's state. The executor fills in ``status``, ``attempts`` and ``result``."""

    task: AnyTask
    deltas: asyncio.Queue[str | None] | None  # only for stream=True tasks
    runner: asyncio.Task[None] | None = None
    status: TaskStatus = TaskStatus.PENDING
    attempts: int = 0
    streamed: bool = False
    result: TaskResult | None = None


Execute = Callable[[TaskRecord], Coroutine[Any, Any, None]]
NeverStarted = Callable[[TaskRecord], None]


class TaskTable:
    """Starts tasks with ``execute`` and keeps their records until collected or expired.

    ``never_started`` gives a result to a task cancelled before its coroutine took its
    first step (asyncio then never runs the body), so no record is left without one.
    """

    def __init__(self, prefix: str, execute: Execute, never_started: NeverStarted, *, ttl_s: float) -> None:
        self._prefix = prefix
        self._execute = execute
        self._never_started = never_started
        self._ttl_s = ttl_s
        self._records: dict[str, TaskRecord] = {}
        # finished, not yet collected: id -> eviction time, in finish order. An OrderedDict,
        # because a plain dict drained from the front scans its deleted slots on every look.
        self._uncollected: OrderedDict[str, float] = OrderedDict()
        self.received = 0
        """Tasks ever started here: with ``in_flight``, how many have finished."""

    def start(self, task: AnyTask) -> tuple[str, TaskRecord]:
        """Register ``task`` and start running it; its id and record."""
        self._evict_expired()
        task_id = f"{self._prefix}-{self.received}"
        self.received += 1
        record = TaskRecord(task=task, deltas=asyncio.Queue() if getattr(task, "stream", False) else None)
        self._records[task_id] = record
        record.runner = asyncio.create_task(self._execute(record), name=task_id)
        record.runner.add_done_callback(lambda _: self._finished(task_id, record))
        return task_id, record

    def get(self, task_id: str) -> TaskRecord:
        try:
            return self._records[task_id]
        except KeyError:
            raise TaskNotFound(task_id) from None

    def collect(self, task_id: str) -> TaskResult:
        """The finished task's result; its record is evicted."""
        record = self._records.pop(task_id)
        self._uncollected.pop(task_id, None)
        assert record.result is not None, "a finished runner always leaves a result"
        return record.result

    @property
    def in_flight(self) -> int:
        return len(self._records) - len(self._uncollected)

    @property
    def running(self) -> int:
        """Tasks sending now (not waiting for a slot); counted on demand, for status()."""
        return sum(record.status is TaskStatus.RUNNING for record in self._records.values())

    async def cancel_all(self) -> None:
        await _cancel([record.runner for record in self._records.values() if record.runner and not record.runner.done()])

    async def cancel_pending(self, among: Collection[str] | None = None) -> list[str]:
        """Cancel the tasks not yet started (waiting for a slot), of ``among`` if given; their ids."""
        pending = {
            task_id: record.runner
            for task_id, record in self._records.items()
            if record.status is TaskStatus.PENDING and record.runner and (among is None or task_id in among)
        }
        await _cancel(list(pending.values()))
        return list(pending)

    def _finished(self, task_id: str, record: TaskRecord) -> None:
        if record.result is None:
            self._never_started(record)
        self._uncollected[task_id] = time.monotonic() + self._ttl_s

    def _evict_expired(self) -> None:
        """Drop finished records nobody collected within the TTL. The dict is in finish
        order, so only its expired head is visited."""
        now = time.monotonic()
        while self._uncollected:
            task_id, deadline = next(iter(self._uncollected.items()))
            if deadline > now:
                return
            del self._uncollected[task_id]
            self._records.pop(task_id, None)


async def _cancel(runners: list[asyncio.Task[None]]) -> None:
    for runner in runners:
        runner.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
