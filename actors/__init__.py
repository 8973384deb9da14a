"""Ray actors of rayfan: the OpenAI adapter and (with limits) the rate-limit coordinator."""

from actors.adapter import Adapter, AdapterInfo, AdapterStats, OpenAIAdapter
from actors.errors import ConfigError, InvalidTask, RayfanError, RequestFailed, ResultTimeout, TaskNotFound
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
    "EmbeddingTask",
    "InvalidTask",
    "OpenAIAdapter",
    "PriceTable",
    "RayfanError",
    "RequestFailed",
    "ResponsesTask",
    "ResultTimeout",
    "RetryPolicy",
    "TaskError",
    "TaskNotFound",
    "TaskResult",
    "TaskStatus",
    "Usage",
    "parse_task",
]
