"""The output file: Batch-API-shaped JSONL, appended and flushed as results arrive.

Each record is the Batch API's ``{"id", "custom_id", "response", "error"}`` plus rayfan's
own fields under ``"rayfan"``. The file is also the resume journal: on start, records
already there are skipped, a torn last line (a kill mid-write) is cut off, and records
that should be tried again (not run; failed, with ``retry_failed``) are removed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from actors.errors import ConfigError
from actors.models import TaskResult, TaskStatus
from drivers.inputs import InputProblem, InputRequest

BUDGET_EXHAUSTED = "budget_exhausted"
UNPRICED = "unpriced_model"
SCOPE_STOPPED_CODES = frozenset({"insufficient_quota", "key_rejected", "endpoint_unreachable"})
"""Why a scope stops sending: no credit, a key the server keeps rejecting, or an endpoint
that cannot be reached (its certificate is not trusted, its host does not exist). Nothing
of that was billed, so a re-run (with credit, a good key, the right CA) sends them again."""
NOT_RUN_CODES = frozenset({BUDGET_EXHAUSTED, UNPRICED}) | SCOPE_STOPPED_CODES
NOT_RUN_STATUS = "NOT_RUN"
"""The ``status`` of a record for a request deliberately not sent."""
"""Records of requests never sent: a later run sends them again, like records never written."""
DUPLICATE = "duplicate_custom_id"


@dataclass
class ResumeState:
    """What an earlier run already wrote: these are not sent again."""

    done_ids: set[str] = field(default_factory=set)
    done_duplicate_lines: set[int] = field(default_factory=set)
    failed: int = 0
    cost_usd: float = 0.0
    redone: int = 0
    torn: bool = False

    def is_done(self, item: InputRequest | InputProblem) -> bool:
        if isinstance(item, InputProblem) and item.code == DUPLICATE:
            return item.line in self.done_duplicate_lines
        return item.custom_id in self.done_ids

    def remember(self, record: dict[str, Any]) -> None:
        error = record.get("error")
        if error is not None:
            self.failed += 1
        if error is not None and error.get("code") == DUPLICATE:
            self.done_duplicate_lines.add(record["rayfan"]["line"])
        else:
            self.done_ids.add(record["custom_id"])
        self.cost_usd += (record.get("rayfan") or {}).get("cost_usd") or 0.0


def load_resume_state(path: Path, *, retry_failed: bool) -> ResumeState:
    """Read an existing output file and repair it for appending: a torn last line is cut off,
    and records to redo are removed by an atomic, streamed rewrite."""
    state, complete_bytes = _read_resume_state(path, retry_failed)
    if state.redone:
        with atomic_rewrite(path) as out, open(path, "rb") as existing:
            out.writelines(raw for raw in existing if _keeps(raw, retry_failed))
    elif state.torn:
        os.truncate(path, complete_bytes)
    return state


def peek_resume_state(path: Path, *, retry_failed: bool) -> ResumeState:
    """What a run would skip, read without repairing anything (``--dry-run``)."""
    return _read_resume_state(path, retry_failed)[0]


def _read_resume_state(path: Path, retry_failed: bool) -> tuple[ResumeState, int]:
    """The state, and how many bytes of the file are complete lines."""
    state = ResumeState()
    if not path.exists():
        return state, 0
    complete_bytes = 0
    with open(path, "rb") as existing:
        for raw in existing:
            if not raw.endswith(b"\n"):
                state.torn = True  # a kill mid-write; only the last line can lack its newline
                break
            complete_bytes += len(raw)
            record = parse_record(raw)
            if record is None or _should_redo(record, retry_failed):
                state.redone += 1
            else:
                state.remember(record)
    return state, complete_bytes


def _keeps(raw: bytes, retry_failed: bool) -> bool:
    record = parse_record(raw)
    return record is not None and not _should_redo(record, retry_failed)


def parse_record(raw: bytes) -> dict[str, Any] | None:
    if not raw.endswith(b"\n"):
        return None  # torn by a kill mid-write
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past Python's stack
        return None
    return record if _is_record(record) else None


def _is_record(record: object) -> bool:
    """The shape this module writes, as far as resuming reads it; any other line is corrupt."""
    if not isinstance(record, dict) or not isinstance(record.get("custom_id"), str):
        return False
    error, extra = record.get("error"), record.get("rayfan") or {}
    if not isinstance(error, (dict, type(None))) or not isinstance(extra, dict):
        return False
    cost = extra.get("cost_usd")
    if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 <= cost < math.inf):
        return False
    return error is None or error.get("code") != DUPLICATE or isinstance(extra.get("line"), int)


def _should_redo(record: dict[str, Any], retry_failed: bool) -> bool:
    error = record.get("error")
    return error is not None and (retry_failed or error.get("code") in NOT_RUN_CODES)


def check_output(path: Path, *, source: Path) -> None:
    """Raise ConfigError for an output the run must not or cannot write, before anything starts.

    The output is rewritten on resume and by ``--sort``: if it were the input under another
    name (a symlink, ``./``, a hard link) the input would be lost. Creating it is tried and
    undone at once, so a run refused later leaves no empty file behind.
    """
    if _same_file(path, source):
        raise ConfigError(f"-o {path} names the input file {source}: the run would overwrite it; choose another output")
    try:
        if path.exists() and not path.is_file():
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise ConfigError(f"-o {path} is {kind}: the output is a file, read back and rewritten on resume")
        if _same_file(_staging(path), source):
            raise ConfigError(f"-o {path} is rewritten through {_staging(path)}, which names the input file {source}; choose another output")
        if path.exists():
            with open(path, "ab"):
                pass
        else:
            with open(path, "xb"):
                pass
            path.unlink()
    except OSError as err:
        raise ConfigError(f"-o {path}: cannot write it ({err.strerror or err})") from None


def _same_file(one: Path, other: Path) -> bool:
    try:
        return os.path.samefile(one, other)
    except OSError:  # either is missing (or unreadable), so it is not the other one
        return False


def _staging(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def atomic_rewrite(path: Path) -> Iterator[IO[bytes]]:
    """A file that replaces ``path`` only once fully written and synced: a kill leaves the
    old file or the new one, never half of either."""
    temporary = _staging(path)
    try:
        with open(temporary, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def result_record(request: InputRequest, result: TaskResult) -> dict[str, Any]:
    return line_result_record(request.line, result)


def line_result_record(line: int, result: TaskResult, *, record_id: str | None = None, **more: Any) -> dict[str, Any]:
    """The record of ``result``, for the request on input line ``line``. ``record_id`` keeps
    the id the Batch API gave the answer; ``more`` adds rayfan fields (the batch it came in)."""
    extra = {
        "line": line,
        "status": result.status.value,
        "model": result.model,
        "usage": result.usage.model_dump(),
        "cost_usd": result.cost_usd,
        "attempts": result.attempts,
        "latency_s": round(result.latency_s, 4),
        **more,
    }
    if result.error is not None:
        return _record(result.custom_id, None, result.error.model_dump(exclude_none=True), extra, record_id)
    response = {"status_code": 200, "request_id": result.request_id, "body": result.body or _synthesized_body(result)}
    return _record(result.custom_id, response, None, extra, record_id)


def problem_record(problem: InputProblem) -> dict[str, Any]:
    extra = {"line": problem.line, "status": TaskStatus.FAILED.value}
    return _record(problem.custom_id, None, {"code": problem.code, "message": problem.message}, extra)


def not_run_record(request: InputRequest, code: str, message: str) -> dict[str, Any]:
    extra = {"line": request.line, "status": NOT_RUN_STATUS}
    return _record(request.custom_id, None, {"code": code, "message": message}, extra)


def _record(
    custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None, extra: dict[str, Any], record_id: str | None = None
) -> dict[str, Any]:
    record_id = record_id or f"batch_req_{uuid.uuid4().hex}"
    return {"id": record_id, "custom_id": custom_id, "response": response, "error": error, "rayfan": extra}


def _synthesized_body(result: TaskResult) -> dict[str, Any]:
    """A chat.completion body for streamed results, whose chunks left no single body."""
    return {
        "object": "chat.completion",
        "model": result.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text}, "finish_reason": result.finish_reason}],
        "usage": {
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "total_tokens": result.usage.total_tokens,
        },
    }


class OutputWriter:
    """Appends one line per record and flushes it, so a kill loses at most the line being written.

    Lines are ASCII: every other character is a \\u escape. A raw U+2028 or U+0085 inside a
    string is valid JSON, yet tools that split lines on them would read one record as two;
    and a lone surrogate (from a ``\\ud800`` escape) cannot be written as UTF-8 at all.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = open(path, "a", encoding="ascii")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=True) + "\n")
        self._file.flush()

    def sync(self) -> None:
        """Written through to the disk: what a journal that names these records as written needs first."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self.sync()
        self._file.close()

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
