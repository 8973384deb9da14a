"""An adapter actor whose link to the driver breaks once, for tests of the dispatcher.

In a module of its own: Ray's workers import an actor's class by module, and they can
import ``tests.…`` (the driver's directory is on their path) but not a pytest test module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError

from actors import Adapter, TaskResult


@ray.remote
class LinkLostOnce(Adapter):
    """An adapter whose first batch stream breaks as when Ray loses the link to a live actor
    (``ActorUnavailableError``: "may or may not have executed"): the batch's requests go on."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._orphan: asyncio.Future[None] | None = None

    async def stream_batch(self, tasks: list[Any], tag: int | None = None) -> AsyncIterator[list[tuple[int, TaskResult]]]:
        if self._orphan is not None:
            async for item in super().stream_batch(tasks, tag):
                yield item
            return
        self._orphan = asyncio.ensure_future(self._drain(super().stream_batch(tasks, tag)))
        while (await self.status()).in_flight < len(tasks):  # its tasks have started
            await asyncio.sleep(0)
        raise ActorUnavailableError("the link to the actor was lost", None)

    @staticmethod
    async def _drain(stream: AsyncIterator[object]) -> None:
        async for _ in stream:
            pass
