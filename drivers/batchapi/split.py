"""Requests into batch files the Batch API takes: one URL and one model per file, within the
limits on requests, bytes and (embeddings) inputs per file.

A request's line is its Batch API form, its body exactly what the synchronous path would send
(``request_body``), so a request answers the same either way. Files are written as the input
is read, a few open at once (one per URL and model); a file is closed and synced when the
next request would not fit, and only then handed on, to be named in the journal.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from actors.adapter.endpoints import request_body
from actors.models import AnyTask, EmbeddingTask
from drivers.batchapi.journal import BatchEntry, Journal
from drivers.batchapi.options import BatchLimits
from drivers.inputs import URL_BY_KIND, InputRequest, RawLine, RequestDefaults, parse_line

MAX_OPEN_FILES = 32
"""Files written at once; an input of more models than this closes the oldest first."""

Closed = Callable[[BatchEntry, int], None]
"""Called with a file's entry, complete and synced, and the budget units its requests hold."""


def batch_line(task: AnyTask) -> bytes:
    line = {"custom_id": task.custom_id, "method": "POST", "url": URL_BY_KIND[task.kind], "body": request_body(task)}
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _inputs(task: AnyTask) -> int:
    """What an embeddings batch's input limit counts of one request."""
    if isinstance(task, EmbeddingTask):
        return len(task.input) if isinstance(task.input, list) else 1
    return 0


@dataclass
class _OpenFile:
    entry: BatchEntry
    requests: IO[bytes]
    index: IO[bytes]
    inputs: int = 0
    units: int = 0

    def fits(self, size: int, inputs: int, limits: BatchLimits) -> bool:
        return (
            self.entry.requests < limits.max_requests
            and self.entry.bytes + size <= limits.max_bytes
            and self.inputs + inputs <= limits.max_embedding_inputs
        )

    def write(self, raw: bytes, request: InputRequest, inputs: int, worst_usd: float, units: int) -> None:
        self.requests.write(raw)
        self.index.write(json.dumps([request.line, request.custom_id]).encode() + b"\n")
        self.entry.requests += 1
        self.entry.bytes += len(raw)
        self.entry.reserved_usd += worst_usd
        self.inputs += inputs
        self.units += units

    def close(self) -> None:
        for handle in (self.requests, self.index):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()


class Splitter:
    """Writes requests into the journal's directory as batch files; ``close`` ends the last ones."""

    def __init__(self, journal: Journal, limits: BatchLimits, closed: Closed, *, attempt: int = 1) -> None:
        self._journal = journal
        self._limits = limits
        self._closed = closed
        self._attempt = attempt
        self._open: dict[tuple[str, str], _OpenFile] = {}

    def add(self, request: InputRequest, worst_usd: float = 0.0, units: int = 0) -> bool:
        """Write ``request`` into its file; False if alone it is beyond a file's limits."""
        task = request.task
        raw, inputs = batch_line(task), _inputs(task)
        if len(raw) > self._limits.max_bytes or inputs > self._limits.max_embedding_inputs:
            return False
        key = (URL_BY_KIND[task.kind], task.model)
        current = self._open.get(key)
        if current is not None and not current.fits(len(raw), inputs, self._limits):
            self._close(key)
            current = None
        if current is None:
            if len(self._open) >= MAX_OPEN_FILES:
                self._close(next(iter(self._open)))
            current = self._open[key] = self._start(*key)
        current.write(raw, request, inputs, worst_usd, units)
        return True

    def close(self) -> None:
        for key in list(self._open):
            self._close(key)

    def _start(self, url: str, model: str) -> _OpenFile:
        name = self._journal.new_name()
        entry = BatchEntry(name=name, url=url, model=model, requests=0, bytes=0, attempt=self._attempt)
        return _OpenFile(entry, open(self._journal.requests_file(name), "wb"), open(self._journal.index_file(name), "wb"))

    def _close(self, key: tuple[str, str]) -> None:
        done = self._open.pop(key)
        done.close()
        self._closed(done.entry, done.units)


def left_over(journal: Journal, entry: BatchEntry, custom_ids: set[str]) -> Iterator[InputRequest]:
    """The requests of ``entry`` named in ``custom_ids``, read back from its batch file, each
    with its input line: to go again, in a new batch or through the synchronous path."""
    with open(journal.requests_file(entry.name), "rb") as requests, open(journal.index_file(entry.name), "rb") as index:
        for raw, position in zip(requests, index):
            line, custom_id = json.loads(position)
            if custom_id in custom_ids:
                item = parse_line(RawLine(line, raw.rstrip(b"\n"), terminated=True), RequestDefaults())
                assert isinstance(item, InputRequest), "a batch file holds only requests that parsed"
                yield item
