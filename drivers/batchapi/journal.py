"""The journal of a Batch API run: the batch files made, and what became of each, kept beside
the output so that a re-run picks up what an earlier one submitted instead of paying again.

``OUT.jsonl.batches/`` holds ``state.json`` and the batch files still needed: ``bNNNNNN.jsonl``
(the requests, as uploaded) and ``bNNNNNN.index`` (``[input line, custom_id]`` for each, in the
same order: read without reading the requests). The
state is small (a few hundred bytes a batch) and rewritten whole and atomically on every
change, so a kill leaves the old one or the new one. A batch file is complete and synced
before the state names it. A batch goes::

    SPLIT ──► UPLOADED ──► SUBMITTING ──► SUBMITTED ──► DONE      every request has its record
                            (its create may have     └──► SYNC    some are left for the synchronous path
                             reached the server: look
                             for it before creating)

It holds ids and statuses, never a key or a prompt; the batch files hold the prompts, as the
input does.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from actors.adapter.batch_info import BatchInfo
from actors.errors import ConfigError
from drivers.outputs import atomic_rewrite

STATE_FILE = "state.json"


class Stage(str, enum.Enum):
    SPLIT = "split"
    UPLOADED = "uploaded"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    SYNC = "sync"
    DONE = "done"


OPEN_STAGES = frozenset({Stage.SPLIT, Stage.UPLOADED, Stage.SUBMITTING, Stage.SUBMITTED})
"""A batch in one of these may still be submitted or answered: its requests are not sent otherwise."""


class BatchEntry(BaseModel):
    name: str
    url: str
    model: str
    requests: int
    bytes: int
    attempt: int = 1
    """How many batches its requests have been in, this one included."""
    reserved_usd: float = 0.0
    """The worst case of its requests at batch prices, held against ``--budget-usd`` until it ends."""
    stage: Stage = Stage.SPLIT
    input_file_id: str | None = None
    submitting_since: int | None = None
    """Unix seconds when its create was first tried: a batch made since then may be it."""
    batch: BatchInfo | None = None


class BatchState(BaseModel):
    version: Literal[1] = 1
    endpoint: str
    """Where the batches were submitted (no credentials): they can be read only there."""
    next_number: int = 1
    batches: list[BatchEntry] = Field(default_factory=list)


class Journal:
    """The state and the batch files of one output."""

    def __init__(self, directory: Path, state: BatchState) -> None:
        self.directory = directory
        self.state = state

    @classmethod
    def directory_of(cls, output: Path) -> Path:
        return output.with_name(output.name + ".batches")

    @classmethod
    def read(cls, output: Path) -> Journal | None:
        """The journal beside ``output``, if a Batch API run left one."""
        directory = cls.directory_of(output)
        try:
            text = (directory / STATE_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as err:
            raise ConfigError(f"{directory / STATE_FILE}: cannot read it ({err.strerror or err})") from None
        try:
            return cls(directory, BatchState.model_validate(json.loads(text)))
        except (ValueError, ValidationError) as err:
            raise ConfigError(f"{directory / STATE_FILE} is not a rayfan batch state ({err}); move it away to start over") from None

    @classmethod
    def open(cls, output: Path, endpoint: str) -> Journal:
        """The journal to go on with, or a new one; refused for batches another endpoint holds."""
        journal = cls.read(output)
        if journal is None:
            journal = cls(cls.directory_of(output), BatchState(endpoint=endpoint))
        elif journal.state.endpoint != endpoint and any(entry.stage is not Stage.DONE for entry in journal.state.batches):
            raise ConfigError(
                f"the batches in {journal.directory} were submitted to {journal.state.endpoint}, not {endpoint}:"
                " run with that endpoint to collect them"
            )
        journal.state.endpoint = endpoint
        journal.directory.mkdir(exist_ok=True)
        return journal

    def save(self) -> None:
        with atomic_rewrite(self.directory / STATE_FILE) as out:
            out.write(self.state.model_dump_json(indent=1).encode())

    def new_name(self) -> str:
        name = f"b{self.state.next_number:06d}"
        self.state.next_number += 1
        return name

    def requests_file(self, name: str) -> Path:
        return self.directory / f"{name}.jsonl"

    def index_file(self, name: str) -> Path:
        return self.directory / f"{name}.index"

    def entries(self, *stages: Stage) -> list[BatchEntry]:
        return [entry for entry in self.state.batches if entry.stage in stages]

    def members(self, entry: BatchEntry) -> dict[str, int]:
        """custom_id -> input line, for every request of the batch (as many as one file holds)."""
        return dict(self.index(entry))

    def index(self, entry: BatchEntry) -> Iterator[tuple[str, int]]:
        with open(self.index_file(entry.name), "rb") as index:
            for raw in index:
                line, custom_id = json.loads(raw)
                yield custom_id, line

    def pending_ids(self) -> set[str]:
        """The requests of batches not done: they are answered there, or sent from there."""
        return {custom_id for entry in self.entries(*OPEN_STAGES, Stage.SYNC) for custom_id, _ in self.index(entry)}

    def forget_files(self, name: str) -> None:
        for path in (self.requests_file(name), self.index_file(name)):
            path.unlink(missing_ok=True)

    def sweep(self, *keep: str) -> None:
        """Remove what a kill left behind: files of batches the state does not name (a file
        being written when it came) and of batches done; ``keep`` names others to leave."""
        needed = {STATE_FILE, *keep}
        for entry in self.state.batches:
            if entry.stage is not Stage.DONE:
                needed |= {self.requests_file(entry.name).name, self.index_file(entry.name).name}
        for path in self.directory.iterdir():
            if path.name not in needed and path.is_file():
                os.unlink(path)


def open_batches(output: Path) -> int:
    """Batches of ``output`` that may still be submitted or answered: a run without
    ``--batch-api`` would pay for their requests twice."""
    journal = Journal.read(output)
    return 0 if journal is None else len(journal.entries(*OPEN_STAGES))


def status_lines(output: Path) -> list[str]:
    """What ``rayfan status`` shows of an output's batches: each one and its request counts."""
    journal = Journal.read(output)
    if journal is None:
        return [f"{output}: no Batch API batches"]
    entries = journal.state.batches
    open_count = sum(entry.stage in OPEN_STAGES for entry in entries)
    lines = [f"{output}: {len(entries)} batches ({open_count} open) at {journal.state.endpoint}, journal {journal.directory}"]
    for entry in entries:
        attempt = f", attempt {entry.attempt}" if entry.attempt > 1 else ""
        line = f"  {entry.name} {entry.model} {entry.url}: {entry.requests} requests{attempt}; {entry.stage.value}"
        if entry.batch is not None:
            counts = entry.batch.request_counts
            line += f", {entry.batch.id} {entry.batch.status}: {counts.completed} completed, {counts.failed} failed of {counts.total}"
        lines.append(line)
    return lines
