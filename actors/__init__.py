"""Ray actors of rayfan: the OpenAI adapter and (with limits) the rate-limit coordinator."""

from actors.adapter import Adapter, AdapterInfo, AdapterStats, OpenAIAdapter
from actors.coordinator import Coordinator, RateLimitCoordinator, coordinator_for
from actors.errors import ConfigError, InvalidTask, RayfanError, RequestFailed, ResultTimeout, ScopeStopped, TaskNotFound
from actors.leases import CoordinatedLimit
from actors.limiter import LocalLimit
from actors.limits import CoordinatorSnapshot, LeasePolicy, Limits
from actors.models import (
    DEFAULT_MODEL,
    ChatTask,
    EmbeddingTask,
    ResponsesTask,
    TaskError,
    TaskResult,
    TaskStatus,
    Usage,
    parse_task,
)
from actors.pricing import PriceTable
from actors.retry import RetryPolicy

__all__ = [
    "DEFAULT_MODEL",
    "Adapter",
    "AdapterInfo",
    "AdapterStats",
    "ChatTask",
    "ConfigError",
    "CoordinatedLimit",
    "Coordinator",
    "CoordinatorSnapshot",
    "EmbeddingTask",
    "InvalidTask",
    "LeasePolicy",
    "Limits",
    "LocalLimit",
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
