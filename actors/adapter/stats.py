"""An adapter's running totals: what a driver reads back at the end of a run, and ``rayfan status`` shows."""

from __future__ import annotations

from pydantic import BaseModel

from actors.models import TaskResult, TaskStatus


class AdapterStats(BaseModel):
    """Running totals of one adapter."""

    requests: int = 0  # HTTP attempts sent
    retries: int = 0
    rate_limited: int = 0  # 429 answers, fatal quota included
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def count(self, result: TaskResult) -> None:
        self.completed += result.status is TaskStatus.COMPLETED
        self.failed += result.status is TaskStatus.FAILED
        self.cancelled += result.status is TaskStatus.CANCELLED
        self.prompt_tokens += result.usage.prompt_tokens
        self.completion_tokens += result.usage.completion_tokens
        self.cost_usd += result.cost_usd or 0.0
