"""Spread tasks over adapter actors with a bounded window of ObjectRefs.

Only ``max_in_flight`` requests are ever held; ``ray.wait`` hands back whichever finish
first, so results stream out in completion order and memory stays flat however long the
input is. An adapter that dies turns its in-flight requests into error results.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayTaskError

from actors.models import TaskError, TaskResult, TaskStatus, parse_task

Item = TypeVar("Item")


class Dispatcher(Generic[Item]):
    """Sends each task to the least-busy adapter and collects results as they complete."""

    def __init__(self, adapters: Sequence[ActorHandle], *, max_in_flight: int) -> None:
        if not adapters:
            raise ValueError("at least one adapter is needed")
        self._adapters = list(adapters)
        self._busy = [0] * len(adapters)
        self._pending: dict[ray.ObjectRef, tuple[Item, Any, int]] = {}
        self.max_in_flight = max_in_flight

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def has_room(self) -> bool:
        return len(self._pending) < self.max_in_flight

    def send(self, item: Item, task: Any) -> None:
        index = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[index] += 1
        self._pending[self._adapters[index].run.remote(task)] = (item, task, index)

    def collect(self, timeout: float | None = None) -> list[tuple[Item, TaskResult]]:
        """Wait up to ``timeout`` for at least one result, then take every one that is ready."""
        refs = list(self._pending)
        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if not ready:
            return []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return [self._finish(ref, value) for ref, value in zip(ready, _get_each(ready))]

    def _finish(self, ref: ray.ObjectRef, value: TaskResult | BaseException) -> tuple[Item, TaskResult]:
        item, task, index = self._pending.pop(ref)
        self._busy[index] -= 1
        if isinstance(value, BaseException):
            value = _lost_result(task, value)
        return item, value


def _get_each(refs: list[ray.ObjectRef]) -> list[TaskResult | BaseException]:
    """All values in one round trip; only when one failed, fetch each alone to find which."""
    try:
        return ray.get(refs)
    except (RayActorError, RayTaskError):
        values: list[TaskResult | BaseException] = []
        for ref in refs:
            try:
                values.append(ray.get(ref))
            except (RayActorError, RayTaskError) as err:
                values.append(err)
        return values


def _lost_result(task: Any, error: BaseException) -> TaskResult:
    code = "adapter_died" if isinstance(error, RayActorError) else "internal_error"
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return TaskResult(
        custom_id=task.custom_id,
        status=TaskStatus.FAILED,
        model=task.model,
        error=TaskError(code=code, message=first_line),
    )


def fan_out(
    tasks: Iterable[Any], adapters: Sequence[ActorHandle], *, max_in_flight: int = 512
) -> Iterator[tuple[Any, TaskResult]]:
    """Yield ``(task, result)`` for every task, in completion order, never holding more than
    ``max_in_flight`` requests. Tasks are models or dicts; invalid ones raise InvalidTask
    before anything of theirs is sent."""
    dispatcher: Dispatcher[Any] = Dispatcher(adapters, max_in_flight=max_in_flight)
    for task in tasks:
        dispatcher.send(task, parse_task(task))
        while not dispatcher.has_room:
            yield from dispatcher.collect()
    while dispatcher.in_flight:
        yield from dispatcher.collect()
