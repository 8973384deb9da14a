"""A run on a Ray that outlives it takes spare adapters left by the run before, and leaves
spares for the next (``actors/adapter/spare.py`` says what a spare is and how it ends with
its driver). Spares keep the run's spread: adapter ``i`` takes a spare only on the node it
would start on. A spare not there, or not answering in time, costs nothing but the wait:
a new adapter starts in its place, as without spares."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.adapter.spare import SPARE_NAME_PREFIX, SpareAdapter, code_identity
from actors.ratelimit.coordinator import NAMESPACE
from drivers.adapter_group import AdapterRecipe

log = logging.getLogger(__name__)

SPARE_IDLE_S = 900.0
"""A spare no run takes for this long exits (as an unused coordinator does)."""
MAX_SPARES = 8
"""At most this many spares of one identity are left waiting, whatever a run's adapter count."""
TAKE_WITHIN_S = 5.0
"""How long a run waits for spares to answer (one still starting, say); one that has not
answered by then is not waited for, and a new adapter starts instead."""
STARTING_S = 1.0
"""How long a run's end waits to hear which spares wait; one silent by then is taken to be
starting, and counts as waiting."""
ANY_NODE = ""
"""The node of a spare not heard from yet, or wanted for an adapter Ray places itself."""


def spare_identity() -> str:
    """What a spare must share with the run that takes it: the adapter's code and versions
    (``code_identity``), and the job's runtime environment, which a spare keeps from the job
    that started it (its packages, its variables)."""
    environment = json.dumps(ray.get_runtime_context().runtime_env, sort_keys=True, default=str)
    return hashlib.sha256(f"{code_identity()}|{environment}".encode()).hexdigest()[:12]


def take_spares(recipe: AdapterRecipe, shares: list[int], placements: list[Any]) -> dict[int, ActorHandle[Any]]:
    """Spares of this code made adapters of the run, by adapter index: adapter ``i`` takes
    one on the node ``placements[i]`` names (any node for ``SPREAD``), if one waits there."""
    waiting = {name: spare for name, spare in _waiting(spare_names(spare_identity()), TAKE_WITHIN_S).items() if spare[1] != ANY_NODE}
    picked: dict[int, ActorHandle[Any]] = {}
    for index, placement in enumerate(placements):
        node = _node_of(placement)
        name = next((name for name, (_, at) in waiting.items() if node in (ANY_NODE, at)), None)
        if name is not None:
            picked[index] = waiting.pop(name)[0]
    job = ray.get_runtime_context().get_job_id()
    asked: dict[int, ray.ObjectRef[Any]] = {index: handle.take.remote(job=job, **recipe.arguments(index, shares[index])) for index, handle in picked.items()}
    answered = set(ray.wait(list(asked.values()), num_returns=len(asked), timeout=TAKE_WITHIN_S)[0]) if asked else set()
    # A take not answered in time may still take the spare for this run; never used, it ends with the run's job.
    taken = {index: picked[index] for index, ref in asked.items() if ref in answered and _answer(ref) is not None}
    if taken:
        log.info("adapters: %d of %d were spares, started before this run", len(taken), len(shares))
    return taken


def leave_spares(placements: list[Any], idle_s: float = SPARE_IDLE_S) -> int:
    """Start spares so that one waits where each of ``placements`` puts an adapter (the
    run's, at most ``MAX_SPARES``), counting those already waiting; returns how many
    started. Not waited for: they start after this run."""
    identity = spare_identity()
    waiting = [node for _, node in _waiting(spare_names(identity), STARTING_S).values()]
    missing: list[Any] = []
    for placement in placements[:MAX_SPARES]:
        there = next((at for at in waiting if at in (_node_of(placement), ANY_NODE)), None)
        if there is None:
            missing.append(placement)
        else:
            waiting.remove(there)
    spare_class: Any = SpareAdapter  # @ray.remote(max_concurrency=...) hides its ActorClass from type checkers
    for placement in missing:
        name = f"{SPARE_NAME_PREFIX}{identity}-{uuid.uuid4().hex[:8]}"
        spare_class.options(name=name, namespace=NAMESPACE, lifetime="detached", scheduling_strategy=placement).remote(idle_s=idle_s)
    return len(missing)


def spare_names(identity: str | None = None) -> list[str]:
    """The spares on the cluster, taken or not; only those of ``identity`` if given."""
    prefix = SPARE_NAME_PREFIX + (f"{identity}-" if identity else "")
    listed: list[dict[str, str]] = ray.util.list_named_actors(all_namespaces=True)
    return sorted(entry["name"] for entry in listed if entry["namespace"] == NAMESPACE and entry["name"].startswith(prefix))


def _waiting(names: list[str], within_s: float) -> dict[str, tuple[ActorHandle[Any], str]]:
    """Those of ``names`` no run has taken, with their node: the ones that say so within
    ``within_s``, and the ones silent by then (still starting) with ``ANY_NODE``."""
    handles = {name: handle for name in names if (handle := _handle(name)) is not None}
    asked: dict[str, ray.ObjectRef[Any]] = {name: handle.waiting.remote() for name, handle in handles.items()}
    answered = set(ray.wait(list(asked.values()), num_returns=len(asked), timeout=within_s)[0]) if asked else set()
    nodes = {name: ANY_NODE if ref not in answered else _answer(ref) for name, ref in asked.items()}
    return {name: (handles[name], node) for name, node in nodes.items() if node is not None}


def _node_of(placement: Any) -> str:
    return placement.node_id if isinstance(placement, NodeAffinitySchedulingStrategy) else ANY_NODE


def _handle(name: str) -> ActorHandle[Any] | None:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:  # gone since it was listed (expired, or ended with its run)
        return None


def _answer(ref: ray.ObjectRef[Any]) -> Any:
    """A spare's answer; None if it died, or could not be taken (no way to watch its driver here)."""
    try:
        return ray.get(ref)
    except (RayActorError, RayTaskError):
        return None
