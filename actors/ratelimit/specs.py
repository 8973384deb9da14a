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
from actors.ratelimit.coordinator import LimitScope, ScopeJoin, new_run
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
        """Join ``scope`` as a new run and share its coordinator between ``adapters`` adapters."""
        spec, join = cls.joining(scope, adapters=adapters)
        return spec.joined(join)

    @classmethod
    def joining(cls, scope: LimitScope, *, adapters: int) -> tuple[CoordinatedLimitSpec, ScopeJoin]:
        """``shared`` without waiting for the coordinator's answer, as ``rayfan run`` does:
        its adapters start meanwhile. ``joined(join)`` before sending anything."""
        join = ScopeJoin(scope, new_run())
        spec = cls(coordinator=join.handle, adapters=adapters, limits=scope.limits, policy=scope.policy, run=join.run, scope=scope)
        return spec, join

    def joined(self, join: ScopeJoin) -> CoordinatedLimitSpec:
        """This spec once ``join`` is answered, with the coordinator that answered (adapters
        given the one asked, should it have expired meanwhile, find the new one by name)."""
        handle = join.wait()
        return self if handle is self.coordinator else self.model_copy(update={"coordinator": handle})

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
