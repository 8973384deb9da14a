"""What a Batch API run did: the run's usual counts (``RunSummary``: the exit code is read
from them alike), and the files and batches it made or collected."""

from __future__ import annotations

from pydantic import Field

from drivers.summary import RunSummary


class BatchRunSummary(RunSummary):
    files_uploaded: int = 0
    batches_submitted: int = 0
    batches_ended: dict[str, int] = Field(default_factory=dict)
    """Batches collected by this run, by how they ended (completed, expired, failed, cancelled)."""
    already_submitted: int = 0
    """Requests found in batches an earlier run submitted: collected, not sent again."""
    resubmitted: int = 0
    """Requests a batch left unfinished, put in a new batch."""
    sent_sync: int = 0
    """Requests a batch left unfinished, sent through the synchronous path."""
    open_batches: int = 0
    """Batches not yet ended when the run stopped (their requests are paid as they complete)."""
    stopped_by: str | None = None
    """A Batch API call that failed for good and stopped the run (the journal keeps the rest)."""

    def absorb(self, sync: RunSummary) -> None:
        """Add the counts of the synchronous run that sent what the batches left unfinished."""
        self.succeeded += sync.succeeded
        for mine, theirs in ((self.failed, sync.failed), (self.invalid, sync.invalid), (self.not_run, sync.not_run)):
            for code, count in theirs.items():
                mine[code] = mine.get(code, 0) + count
        for model, cost in sync.cost_by_model.items():
            self.cost_by_model[model] = self.cost_by_model.get(model, 0.0) + cost
        self.retries += sync.retries
        self.prompt_tokens += sync.prompt_tokens
        self.completion_tokens += sync.completion_tokens
        self.unpriced += sync.unpriced
        self.abandoned += sync.abandoned
        self.resent += sync.resent
        self.rate = sync.rate
        self.interrupted = self.interrupted or sync.interrupted
        self.deadline_reached = self.deadline_reached or sync.deadline_reached

    def render(self) -> str:
        ended = ", ".join(f"{count} {status}" for status, count in sorted(self.batches_ended.items()))
        lines = [
            super().render(),
            f"batch API: {self.files_uploaded} files uploaded, {self.batches_submitted} batches submitted;"
            f" {sum(self.batches_ended.values())} batches collected" + (f" ({ended})" if ended else ""),
        ]
        if self.already_submitted:
            lines.append(f"  {self.already_submitted} requests were in batches an earlier run submitted: collected, not sent again")
        if self.resubmitted:
            lines.append(f"  {self.resubmitted} requests left unfinished by their batch went in a new one")
        if self.sent_sync:
            lines.append(f"  {self.sent_sync} requests left unfinished by their batch went through the synchronous API")
        if self.stopped_by is not None:
            lines.append(f"  stopped: {self.stopped_by}")
        if self.open_batches:
            lines.append(
                f"  {self.open_batches} batches still open at the endpoint (their requests are paid as they complete):"
                " the same command collects them and submits nothing twice"
            )
        return "\n".join(lines)
