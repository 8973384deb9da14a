"""What a driver follows of a Batch API batch, apart from the calls that fetch it: the driver
reads and journals it without importing the SDK, which only the adapter that calls needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from actors.errors import TaskError

if TYPE_CHECKING:
    from openai.types import Batch

PART_BYTES = 4 * 2**20
"""The most one call carries of a file, either way: a file of hundreds of MB is never one object."""
_ERRORS_KEPT = 5
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
"""Statuses a batch never leaves: its output and error files are final."""


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchInfo(BaseModel):
    """What the driver follows of a batch: the SDK's ``Batch`` without what it never reads."""

    id: str
    status: str
    input_file_id: str
    created_at: int
    ended_at: int | None = None
    """When it completed, failed, expired or was cancelled (the server's clock)."""
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    errors: list[TaskError] = Field(default_factory=list)
    """Why the batch itself failed (its file did not validate, the queue was full): the first few."""

    @classmethod
    def of(cls, batch: Batch) -> BatchInfo:
        ends = (batch.completed_at, batch.failed_at, batch.expired_at, batch.cancelled_at)
        counts = batch.request_counts
        problems = (batch.errors.data or []) if batch.errors else []
        return cls(
            id=batch.id,
            status=batch.status,
            input_file_id=batch.input_file_id,
            created_at=batch.created_at,
            ended_at=max((end for end in ends if end is not None), default=None),
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            request_counts=RequestCounts.model_validate(counts.model_dump()) if counts else RequestCounts(),
            errors=[
                TaskError(code=problem.code or "batch_failed", message=_located(problem.message or "", problem.line))
                for problem in problems[:_ERRORS_KEPT]
            ],
        )

    @property
    def ended(self) -> bool:
        return self.status in ENDED


def _located(message: str, line: int | None) -> str:
    return message if line is None else f"{message} (line {line} of the batch file)"
