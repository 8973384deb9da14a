"""Picklable recipes for limiters: what a driver hands an adapter, built inside its event loop.

A spec is plain data (limits, a coordinator's handle); the limiter it builds holds loop
state (futures, timers) and so is made where it runs, one per adapter.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray.actor import ActorHandle

from actors.ratelimit.coordinated import CoordinatedLimiter
from actors.ratelimit.coordinator import LimitScope, join_scope, new_run
from actors.ratelimit.limiter import Limiter, LocalLimiter
from actors.ratelimit.limits import Limits
from actors.ratelimit.link import RayLink
from actors.ratelimit.protocol import LeasePolicy


class LimitSpec(Protocol):
    """A picklable recipe for a limiter, built inside the adapter that uses it."""

    def build(self, client: str) -> Limiter: ...


class LocalLimitSpec(BaseModel):
    """Limit each adapter on its own to ``limits`` (no coordinator)."""

    model_config = ConfigDict(frozen=True)

    limits: Limits

    def build(self, client: str) -> Limiter:
        return LocalLimiter(self.limits)


class CoordinatedLimitSpec(BaseModel):
    """Share the scope's limits through its coordinator (see ``actors.ratelimit.coordinator.coordinator_for``)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    coordinator: Any
    """The scope's coordinator: an ``ActorHandle``, or for a driver joined with ``ray://`` a
    Ray Client handle, which becomes a plain actor handle on the cluster (its class needs
    grpc, which plain ``ray`` does not install, so it is recognised by name)."""
    adapters: int = Field(ge=1)
    """Adapters in the scope, for the fallback share while the coordinator is away."""
    limits: Limits = Field(default_factory=Limits)
    """Limits known before the first lease (the fallback share's base until a lease says more)."""
    policy: LeasePolicy = Field(default_factory=LeasePolicy)
    run: str | None = None
    """The run these adapters belong to (``join_scope``), so the coordinator knows whose limits count."""
    scope: LimitScope | None = None
    """How to find the coordinator again, or create it, should it expire while the adapters live."""

    @classmethod
    def shared(cls, scope: LimitScope, *, adapters: int) -> CoordinatedLimitSpec:
        """Join ``scope`` as a new run and share its coordinator between ``adapters`` adapters,
        as ``rayfan run`` does."""
        run = new_run()
        return cls(coordinator=join_scope(scope, run), adapters=adapters, limits=scope.limits, policy=scope.policy, run=run, scope=scope)

    @field_validator("coordinator")
    @classmethod
    def _an_actor_handle(cls, value: Any) -> Any:
        if isinstance(value, ActorHandle) or type(value).__name__ == "ClientActorHandle":
            return value
        raise ValueError(f"not a Ray actor handle: {type(value).__name__}")

    def build(self, client: str) -> Limiter:
        return CoordinatedLimiter(
            RayLink(self.coordinator, find=None if self.scope is None else self.scope.coordinator),
            client=f"{client}-{uuid.uuid4().hex[:6]}",
            adapters=self.adapters,
            run=self.run,
            limits=self.limits,
            policy=self.policy,
        )
