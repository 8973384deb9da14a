"""How a coordinated limiter reaches its coordinator: a Ray handle in production, the object in tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayError

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


Find = Callable[[], "ActorHandle[Any]"]
"""Look the coordinator up by name, creating it if none runs (``LimitScope.coordinator``)."""


class RayLink:
    """The coordinator actor behind a handle; a dead or restarting actor is ``CoordinatorUnreachable``.

    Ray restarts a coordinator that crashed behind the same handle, but one that expired
    (idle) is gone for good: with ``find``, the call after a failure looks the scope's
    coordinator up again (a new one if none runs), so adapters that outlive it find the next.
    """

    def __init__(self, handle: ActorHandle[Any] | ClientActorHandle, find: Find | None = None) -> None:
        self._handle = handle
        self._find = find
        self._lost = False

    async def lease(self, request: LeaseRequest) -> Lease:
        lease: Lease = await self._call("lease", request)
        return lease

    async def report(self, client: str, reports: list[Report]) -> Notice:
        notice: Notice = await self._call("report", client, reports)
        return notice

    async def watch(self, client: str, epoch: int, incarnation: str | None) -> Notice:
        notice: Notice = await self._call("watch", client, epoch, incarnation)
        return notice

    async def _call(self, method: str, *args: Any) -> Any:
        if self._lost and self._find is not None:
            await self._refind(self._find)
        ref = getattr(self._handle, method).remote(*args)
        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)  # the coordinator stops waiting too (and gives back a grant it raced)
            raise
        except RayActorError as error:
            self._lost = True
            raise CoordinatorUnreachable(str(error).splitlines()[0]) from error

    async def _refind(self, find: Find) -> None:
        """A name lookup is a blocking call to Ray's GCS: made off the event loop."""
        try:
            self._handle = await asyncio.to_thread(find)
        except (RayError, ValueError) as error:  # no GCS, or a name Ray would not give
            raise CoordinatorUnreachable(f"looking the coordinator up again failed: {error}") from error
        self._lost = False
