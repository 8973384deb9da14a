"""How a coordinated limiter reaches its coordinator: a Ray handle in production, the object in tests."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from actors.errors import RayfanError
from actors.ratelimit.protocol import Lease, LeaseRequest, Notice, Report


if TYPE_CHECKING:  # the Ray Client needs grpc, which plain ray does not install
    from ray.util.client.common import ClientActorHandle

class CoordinatorUnreachable(RayfanError):
    """Raised by a link when the coordinator cannot answer; the client falls back, never the caller."""


class CoordinatorLink(Protocol):
    """How a client reaches its coordinator: a Ray handle in production, the object in tests."""

    async def lease(self, request: LeaseRequest) -> Lease: ...

    async def report(self, client: str, reports: list[Report]) -> Notice: ...

    async def watch(self, client: str, epoch: int, incarnation: str | None) -> Notice: ...


class RayLink:
    """The coordinator actor behind a handle; a dead or restarting actor is ``CoordinatorUnreachable``."""

    def __init__(self, handle: ActorHandle[Any] | ClientActorHandle) -> None:
        self._handle = handle

    async def lease(self, request: LeaseRequest) -> Lease:
        lease: Lease = await self._call(self._handle.lease.remote(request))
        return lease

    async def report(self, client: str, reports: list[Report]) -> Notice:
        notice: Notice = await self._call(self._handle.report.remote(client, reports))
        return notice

    async def watch(self, client: str, epoch: int, incarnation: str | None) -> Notice:
        notice: Notice = await self._call(self._handle.watch.remote(client, epoch, incarnation))
        return notice

    @staticmethod
    async def _call(ref: ray.ObjectRef[Any]) -> Any:
        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)  # the coordinator stops waiting too (and gives back a grant it raced)
            raise
        except RayActorError as error:
            raise CoordinatorUnreachable(str(error).splitlines()[0]) from error
