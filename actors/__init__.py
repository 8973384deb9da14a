"""Ray actors of rayfan: the OpenAI adapter and (with limits) the rate-limit coordinator.

The rooms: ``adapter/`` (the actor, its task table, executor, retry, endpoints and
transport), ``ratelimit/`` (budget, the adapters' limiters, the coordinator and the
protocol between them; it knows nothing of the adapter), ``accounting/`` (tokens and
prices), and beside them ``models.py`` (tasks and results) and ``errors.py`` (the one
exception tree). ARCHITECTURE.md draws the picture; the public names are re-exported here.
"""

from actors.accounting.pricing import PriceTable
from actors.adapter.actor import Adapter, AdapterInfo, OpenAIAdapter
from actors.adapter.executor import AdapterStats
from actors.adapter.retry import RetryPolicy
from actors.errors import ConfigError, InvalidTask, RayfanError, RequestFailed, ResultTimeout, ScopeStopped, TaskError, TaskNotFound
from actors.models import DEFAULT_MODEL, ChatTask, EmbeddingTask, ResponsesTask, TaskResult, TaskStatus, Usage, parse_task
from actors.ratelimit.coordinator import Coordinator, RateLimitCoordinator, coordinator_for
from actors.ratelimit.limits import Limits
from actors.ratelimit.protocol import CoordinatorSnapshot, LeasePolicy
from actors.ratelimit.specs import CoordinatedLimitSpec, LocalLimitSpec

CoordinatedLimit = CoordinatedLimitSpec
LocalLimit = LocalLimitSpec
"""The names these specs had before rayfan's packages were drawn, kept so code written
against them keeps working."""

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
