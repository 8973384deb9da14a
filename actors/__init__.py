"""Ray actors of rayfan: the OpenAI adapter and (with limits) the rate-limit coordinator.

The rooms: ``adapter/`` (the actor, its task table, executor, retry, endpoints and
transport), ``ratelimit/`` (budget, the adapters' limiters, the coordinator and the
protocol between them; it knows nothing of the adapter), ``accounting/`` (tokens and
prices), and beside them ``models.py`` (tasks and results) and ``errors.py`` (the one
exception tree). ARCHITECTURE.md draws the picture; the public names are re-exported here,
each imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.accounting.pricing import PriceTable
    from actors.adapter.actor import Adapter, AdapterInfo, OpenAIAdapter
    from actors.adapter.stats import AdapterStats
    from actors.adapter.retry import RetryPolicy
    from actors.errors import ConfigError, InvalidTask, RayfanError, RequestFailed, ResultTimeout, ScopeStopped, TaskError, TaskNotFound
    from actors.models import DEFAULT_MODEL, ChatTask, EmbeddingTask, ResponsesTask, TaskResult, TaskStatus, Usage, parse_task
    from actors.ratelimit.coordinator import Coordinator, RateLimitCoordinator, coordinator_for
    from actors.ratelimit.limits import Limits
    from actors.ratelimit.protocol import CoordinatorSnapshot, LeasePolicy
    from actors.ratelimit.specs import CoordinatedLimitSpec, LocalLimitSpec

    CoordinatedLimit = CoordinatedLimitSpec
    LocalLimit = LocalLimitSpec

_HOMES = {
    "actors.accounting.pricing": ["PriceTable"],
    "actors.adapter.actor": ["Adapter", "AdapterInfo", "OpenAIAdapter"],
    "actors.adapter.stats": ["AdapterStats"],
    "actors.adapter.retry": ["RetryPolicy"],
    "actors.errors": ["ConfigError", "InvalidTask", "RayfanError", "RequestFailed", "ResultTimeout", "ScopeStopped", "TaskError", "TaskNotFound"],
    "actors.models": ["DEFAULT_MODEL", "ChatTask", "EmbeddingTask", "ResponsesTask", "TaskResult", "TaskStatus", "Usage", "parse_task"],
    "actors.ratelimit.coordinator": ["Coordinator", "RateLimitCoordinator", "coordinator_for"],
    "actors.ratelimit.limits": ["Limits"],
    "actors.ratelimit.protocol": ["CoordinatorSnapshot", "LeasePolicy"],
    "actors.ratelimit.specs": ["CoordinatedLimitSpec", "LocalLimitSpec"],
}
_ALIASES = {"CoordinatedLimit": "CoordinatedLimitSpec", "LocalLimit": "LocalLimitSpec"}
"""The names these specs had before rayfan's packages were drawn, kept so code written
against them keeps working."""
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Each public name is imported on first use: a coordinator's worker process imports
    ``actors.ratelimit`` alone, and starts a second sooner without the SDK and aiohttp
    that the adapter needs."""
    target = _ALIASES.get(name, name)
    if target not in _MODULE_OF:
        raise AttributeError(f"module 'actors' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[target]), target)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_MODEL",
    "Adapter",
    "AdapterInfo",
    "AdapterStats",
    "ChatTask",
    "ConfigError",
    "CoordinatedLimit",
    "CoordinatedLimitSpec",
    "Coordinator",
    "CoordinatorSnapshot",
    "EmbeddingTask",
    "InvalidTask",
    "LeasePolicy",
    "Limits",
    "LocalLimit",
    "LocalLimitSpec",
    "OpenAIAdapter",
    "PriceTable",
    "RateLimitCoordinator",
    "RayfanError",
    "RequestFailed",
    "ResponsesTask",
    "ResultTimeout",
    "RetryPolicy",
    "ScopeStopped",
    "TaskError",
    "TaskNotFound",
    "TaskResult",
    "TaskStatus",
    "Usage",
    "coordinator_for",
    "parse_task",
]
