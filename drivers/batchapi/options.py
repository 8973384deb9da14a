"""What ``--batch-api`` adds to a run's options: the Batch API's limits, how often to look at
a batch, and what becomes of the requests a batch leaves unfinished."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_POLL_S = 60.0


class BatchLimits(BaseModel):
    """What one batch file may hold (OpenAI's limits, per file; a lower one is the user's choice)."""

    model_config = ConfigDict(frozen=True)

    max_requests: int = Field(default=50_000, gt=0)
    max_bytes: int = Field(default=200_000_000, gt=0)
    """200 MB, counted in bytes of 10^6: within the API's limit however it counts a megabyte."""
    max_embedding_inputs: int = Field(default=50_000, gt=0)
    """An embeddings batch holds at most this many inputs across its requests."""


class BatchApiOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    limits: BatchLimits = Field(default_factory=BatchLimits)
    poll_s: float = Field(default=DEFAULT_POLL_S, gt=0)
    """The longest wait between two looks at an open batch: the first comes after a second
    (or ``poll_s``, if shorter), each next one twice as late, up to this."""
    unfinished: Literal["resubmit", "sync"] = "resubmit"
    """Requests a batch left unfinished (it expired, failed or was cancelled; a transient
    error): in a new batch, or through the synchronous path once every batch has ended."""
    max_attempts: int = Field(default=3, ge=1)
    """Batches a request may go through; after the last, its record says why it never finished."""
