"""Spread tasks over adapter actors with a bounded window of requests in flight.

At most ``max_in_flight`` requests are open at once; ``ray.wait`` hands back whichever
finish first, so results stream out in completion order and memory stays flat however
long the input is. Tasks travel in small batches (one actor call for several requests)
because an actor call costs more CPU than the HTTP request it carries; a batch is sent
when full or as soon as the dispatcher waits, so nothing sits in a buffer while the window
has room. Results come back per request, not per batch (``Adapter.stream_batch``, a Ray
streaming generator): one slow request holds back no finished neighbour, and a driver
killed with ``kill -9`` has written every result that reached it.

An adapter that dies (its process killed, its node lost) loses the batches it held: their
tasks go out again, at once, to the adapters still up, and the dead one gets nothing until
a probe finds it dead (adapters started by ``start_adapters`` are then replaced) or back.
Some of those tasks had already been sent, so their prompts may be billed twice: ``resent``
counts them. An adapter Ray only could not reach is treated alike, since its results are
lost with the stream; when its probe answers, it cancels what it still runs of them. A task
lost this way more than ``MAX_RESENDS`` times (a task that kills its adapter) ends as an
``adapter_died`` result, as do all tasks once no adapter is left.

When the adapters themselves cap their requests (``start_adapters(max_in_flight=...)``)
at no more than the window, the dispatcher hands them two batches each beyond it: those
wait in the adapters' queues, so a finished request's slot is refilled at once rather
than after its result has travelled to the driver and a new task back (bench/README.md).
Once the input has run out (``input_done``), tasks still queued in a full adapter while
another has free slots would wait up to a whole request for nothing: the dispatcher has
the full one hand them back unsent (``Adapter.hand_back_waiting``) and sends them to the
free one at once; their places in the original batch are skipped when it comes back.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import ray
from ray import ObjectRefGenerator
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, RayActorError, RayTaskError
from ray.util.client import ray as ray_client

from actors.adapter.actor import MAX_CONCURRENCY
from actors.errors import TaskError
from actors.models import TaskResult, TaskStatus, parse_task
from drivers.adapter_group import AdapterGroup

log = logging.getLogger(__name__)
Item = TypeVar("Item")
MAX_BATCH = 64
MAX_RESENDS = 2


def batch_size_for(max_in_flight: int, adapters: int) -> int:
    """Batches small enough that every adapter holds several at once, so one slow request
    holds back at most a quarter of an adapter's share of the window."""
    return max(1, min(MAX_BATCH, max_in_flight // (4 * adapters)))


def queue_ahead_for(batch_size: int, adapters: int) -> int:
    """Two batches per adapter: one to refill its slots while the next is on its way."""
    return 2 * batch_size * adapters


@dataclass
class _Batch(Generic[Item]):
    tag: int
    adapter: int
    entries: list[tuple[Item, Any]]
    moved: set[int] = field(default_factory=set)  # positions handed back and sent elsewhere
    done: set[int] = field(default_factory=set)  # positions whose result came back

    def open_positions(self) -> list[int]:
        return [position for position in range(len(self.entries)) if position not in self.done]


class Dispatcher(Generic[Item]):
    """Sends tasks to the least-busy adapter in batches and collects results as they complete."""

    def __init__(self, adapters: Sequence[ActorHandle[Any]], *, max_in_flight: int, batch_size: int | None = None) -> None:
        if not adapters:
            raise ValueError("at least one adapter is needed")
        self._adapters = list(adapters)
        self._group = adapters if isinstance(adapters, AdapterGroup) else None
        """Where a dead adapter's replacement comes from (``start_adapters`` makes one)."""
        self._busy = [0] * len(adapters)
        self._buffer: list[tuple[Item, Any]] = []
        self._pending: dict[ObjectRefGenerator | ray.ObjectRef[Any], _Batch[Item]] = {}  # one result stream (or whole result) per batch
        self._streams = not ray_client.is_connected()  # type: ignore[no-untyped-call]  # Ray leaves it unannotated
        """Ray Client (``ray://``) has no streaming generators: there, a batch's results come
        back together (``Adapter.run_batch``), so a slow request holds back its batch."""
        self._by_tag: dict[int, _Batch[Item]] = {}
        self._tags = itertools.count()
        self._in_flight = 0
        self._input_done = False
        self._stopping = False
        self._handing_back: set[int] = set()  # adapters asked to hand back their queue, until a batch of theirs returns
        self._probes: dict[int, ray.ObjectRef[Any]] = {}  # adapters that lost a batch, until they answer again
        self._lost_tags: dict[int, list[int]] = {}  # per probed adapter, the batches it lost
        self._dead: set[int] = set()  # adapters gone for good
        self._losses: dict[int, int] = {}  # id(task) -> times its adapter died under it
        self.resent = 0
        """Tasks sent again because their adapter died: each may have been billed twice."""
        self.batch_size = batch_size or batch_size_for(max_in_flight, len(adapters))
        self._caps = adapter_limits(self._adapters)
        capped = sum(self._caps) <= max_in_flight
        self.max_held = max_in_flight + (queue_ahead_for(self.batch_size, len(adapters)) if capped else 0)

    @property
    def in_flight(self) -> int:
        """Tasks handed to adapters whose results have not come back: running or queued."""
        return self._in_flight

    @property
    def has_room(self) -> bool:
        return self._in_flight < self.max_held

    def send(self, item: Item, task: Any) -> None:
        self._buffer.append((item, task))
        self._in_flight += 1
        if len(self._buffer) >= self.batch_size:
            self._flush()

    def input_done(self) -> None:
        """No more tasks will be sent: from now on, queued tasks move to adapters with free slots."""
        self._input_done = True

    def collect(self, timeout: float | None = None) -> list[tuple[Item, TaskResult]]:
        """Wait up to ``timeout`` for at least one batch, then take every one that is ready."""
        self._check_probes()
        if self._input_done and not self._stopping:
            self._move_queued_to_free_adapters()
        finished = self._flush()
        refs = list(self._pending) + list(self._probes.values())
        if finished or not refs:
            return finished
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if not ready:
            return []
        ready, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
        nexts: list[tuple[ObjectRefGenerator | ray.ObjectRef[Any], ray.ObjectRef[Any]]] = []
        for stream in ready:
            if not isinstance(stream, ObjectRefGenerator):
                nexts.append((stream, stream))  # a whole batch's results: its one value
                continue
            try:
                nexts.append((stream, next(stream)))
            except StopIteration:
                finished.extend(self._close(stream, None))
        for (stream, _), value in zip(nexts, get_each([ref for _, ref in nexts])):  # one round trip for all
            if not isinstance(stream, ObjectRefGenerator) and not isinstance(value, BaseException):
                value = list(enumerate(value))
            finished.extend(self._take(stream, value))
        return finished

    def cancel_waiting(self) -> None:
        """Send nothing more: tasks still buffered here are dropped (no result will come for
        them), and those queued in the adapters are cancelled unsent; their results come
        back CANCELLED with the batches they belong to."""
        self._stopping = True
        self._in_flight -= len(self._buffer)
        self._buffer = []
        get_each([adapter.cancel_waiting.remote() for adapter in self._adapters])

    def _move_queued_to_free_adapters(self) -> None:
        """An adapter holding more tasks than its cap has some queued; if another has free
        slots (it holds fewer than its cap, so fewer run), the full one hands its queue back."""
        if not any(busy < cap for busy, cap in zip(self._busy, self._caps)):
            return
        full = [i for i, (busy, cap) in enumerate(zip(self._busy, self._caps)) if busy > cap and i not in self._handing_back]
        self._handing_back.update(full)
        for reply in get_each([self._adapters[i].hand_back_waiting.remote() for i in full]):
            if isinstance(reply, BaseException):
                continue  # a dead adapter: its batches come back as errors
            for tag, position in reply:
                batch = self._by_tag[tag]
                batch.moved.add(position)
                self._buffer.append(batch.entries[position])  # still in flight: it goes out with the next flush

    def _flush(self) -> list[tuple[Item, TaskResult]]:
        """Send the buffer to the least-busy adapter that is up; with none left at all, the
        buffered tasks end as ``adapter_died`` results, returned."""
        if not self._buffer:
            return []
        up = [i for i in range(len(self._adapters)) if i not in self._dead and i not in self._probes]
        if not up:
            if len(self._dead) < len(self._adapters):
                return []  # some adapter may come back: the buffer waits for it
            entries, self._buffer = self._buffer, []
            self._in_flight -= len(entries)
            error = RayActorError()
            return [(item, _lost_result(task, error)) for item, task in entries]
        entries, self._buffer = self._buffer, []
        index = min(up, key=self._busy.__getitem__)
        self._busy[index] += len(entries)
        batch = _Batch(next(self._tags), index, entries)
        self._by_tag[batch.tag] = batch
        adapter = self._adapters[index]
        run: Any = adapter.stream_batch if self._streams else adapter.run_batch
        self._pending[run.remote([task for _, task in entries], batch.tag)] = batch
        return []

    def _take(
        self, stream: ObjectRefGenerator | ray.ObjectRef[Any], value: list[tuple[int, TaskResult]] | BaseException
    ) -> list[tuple[Item, TaskResult]]:
        """One item of a batch's stream: the results that finished together, or the error that cut it."""
        batch = self._pending[stream]
        if isinstance(value, BaseException):
            return self._close(stream, value)
        finished: list[tuple[Item, TaskResult]] = []
        for position, result in value:
            batch.done.add(position)
            self._busy[batch.adapter] -= 1
            if position in batch.moved:
                continue
            item, task = batch.entries[position]
            self._losses.pop(id(task), None)
            finished.append((item, result))
        self._in_flight -= len(finished)
        if len(batch.done) == len(batch.entries):
            finished += self._close(stream, None)
        return finished

    def _close(self, stream: ObjectRefGenerator | ray.ObjectRef[Any], error: BaseException | None) -> list[tuple[Item, TaskResult]]:
        """The batch's stream is over: complete, or cut by ``error``, which the positions
        still open share (an adapter that died: they go out again)."""
        batch = self._pending.pop(stream)
        del self._by_tag[batch.tag]
        self._handing_back.discard(batch.adapter)
        open_positions = batch.open_positions()
        self._busy[batch.adapter] -= len(open_positions)
        if not open_positions:
            return []
        if isinstance(error, RayActorError):
            return self._lost(batch, open_positions, error)
        cause = error or RuntimeError("the adapter's result stream ended early")
        lost = [batch.entries[position] for position in open_positions if position not in batch.moved]
        self._in_flight -= len(lost)
        return [(item, _lost_result(task, cause)) for item, task in lost]

    def _lost(self, batch: _Batch[Item], open_positions: list[int], error: RayActorError) -> list[tuple[Item, TaskResult]]:
        """The adapter died holding these positions of ``batch``: their tasks go out again
        (after Ctrl-C they are dropped unsent, like the buffer), and the adapter is probed
        before it gets more."""
        if batch.adapter not in self._dead and batch.adapter not in self._probes:
            log.warning("adapter %d was lost (%s): its open requests go to the others", batch.adapter, type(error).__name__)
            self._probes[batch.adapter] = self._adapters[batch.adapter].status.remote()
        self._lost_tags.setdefault(batch.adapter, []).append(batch.tag)
        given_up: list[tuple[Item, TaskResult]] = []
        for position in open_positions:
            item, task = batch.entries[position]
            if position in batch.moved:
                continue
            losses = self._losses.get(id(task), 0) + 1
            if self._stopping or losses > MAX_RESENDS:
                self._losses.pop(id(task), None)
                self._in_flight -= 1
                if not self._stopping:
                    given_up.append((item, _lost_result(task, error)))
                continue
            self._losses[id(task)] = losses
            self._buffer.append((item, task))
            self.resent += 1
        return given_up

    def _check_probes(self) -> None:
        """Adapters that answer their probe are up: replacements, or adapters that never
        died (``ActorUnavailableError``: a call that "may or may not have executed"); these
        cancel what they still run of the batches they lost, since it went out again
        elsewhere. One whose probe fails with ``ActorDiedError`` is replaced, as long as its
        group allows (``AdapterGroup.replace``); then it is gone for good."""
        if not self._probes:
            return
        ready, _ = ray.wait(list(self._probes.values()), num_returns=len(self._probes), timeout=0)
        answered = set(ready)
        for index, ref in list(self._probes.items()):
            if ref not in answered:
                continue
            del self._probes[index]
            reply = get_each([ref])[0]
            if isinstance(reply, ActorDiedError):
                self._lost_tags.pop(index, None)
                replacement = self._group.replace(index) if self._group is not None else None
                if replacement is None:
                    log.warning("adapter %d is dead and not replaced again: the others carry on", index)
                    self._dead.add(index)
                else:  # up once it answers its own probe
                    log.info("adapter %d is dead: a new one takes its place", index)
                    self._adapters[index] = replacement
                    self._probes[index] = replacement.status.remote()
            elif isinstance(reply, BaseException):
                self._probes[index] = self._adapters[index].status.remote()  # not reachable yet: ask again
            else:
                log.info("adapter %d is up", index)
                if tags := self._lost_tags.pop(index, None):
                    self._adapters[index].cancel_batches.remote(tags)
                self._busy[index] = sum(len(b.open_positions()) for b in self._pending.values() if b.adapter == index)


def adapter_limits(adapters: Sequence[ActorHandle[Any]]) -> list[int]:
    """Each adapter's own cap on open requests; a dead one counts as uncapped (its tasks
    come back as adapter_died results anyway)."""
    infos = get_each([adapter.status.remote() for adapter in adapters])
    return [MAX_CONCURRENCY if isinstance(info, BaseException) else info.max_in_flight for info in infos]


def get_each(refs: list[ray.ObjectRef[Any]]) -> list[Any]:
    """All values in one round trip; only when one failed, fetch each alone to find which."""
    try:
        return ray.get(refs)
    except (RayActorError, RayTaskError):
        values: list[Any] = []
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
    tasks: Iterable[Any], adapters: Sequence[ActorHandle[Any]], *, max_in_flight: int = 512
) -> Iterator[tuple[Any, TaskResult]]:
    """Yield ``(task, result)`` for every task, in completion order, never with more than
    ``max_in_flight`` requests open. Tasks are models or dicts; invalid ones raise
    InvalidTask before anything of theirs is sent."""
    dispatcher: Dispatcher[Any] = Dispatcher(adapters, max_in_flight=max_in_flight)
    for task in tasks:
        dispatcher.send(task, parse_task(task))
        while not dispatcher.has_room:
            yield from dispatcher.collect()
    dispatcher.input_done()
    while dispatcher.in_flight:
        yield from dispatcher.collect()
