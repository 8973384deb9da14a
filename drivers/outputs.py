"""The output file: Batch-API-shaped JSONL, appended and flushed as results arrive.

Each record is the Batch API's ``{"id", "custom_id", "response", "error"}`` plus rayfan's
own fields under ``"rayfan"``. The file is also the resume journal: on start, records
already there are skipped, a torn last line (a kill mid-write) is cut off, and records
that should be tried again (not run; failed, with ``retry_failed``) are removed.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from actors.models import TaskResult, TaskStatus
from drivers.inputs import InputProblem, InputRequest

log = logging.getLogger(__name__)

NOT_RUN_CODES = frozenset({"budget_exhausted", "interrupted"})
DUPLICATE = "duplicate_custom_id"


@dataclass
class ResumeState:
    """What an earlier run already wrote: these are not sent again."""

    done_ids: set[str] = field(default_factory=set)
    done_duplicate_lines: set[int] = field(default_factory=set)
    kept: int = 0
    dropped: int = 0

    def is_done(self, item: InputRequest | InputProblem) -> bool:
        if isinstance(item, InputProblem) and item.code == DUPLICATE:
            return item.line in self.done_duplicate_lines
        return item.custom_id in self.done_ids


def load_resume_state(path: Path, *, retry_failed: bool) -> ResumeState:
    """Read an existing output file, rewriting it (atomically) without records to redo."""
    state = ResumeState()
    if not path.exists():
        return state
    keep: list[str] = []
    with open(path, encoding="utf-8") as existing:
        for text in existing:
            record = _parse_record(text)
            if record is None or _should_redo(record, retry_failed):
                state.dropped += 1
                continue
            keep.append(text)
            if (record.get("error") or {}).get("code") == DUPLICATE:
                state.done_duplicate_lines.add(record["rayfan"]["line"])
            else:
                state.done_ids.add(record["custom_id"])
    state.kept = len(keep)
    if state.dropped:
        _rewrite(path, keep)
    return state


def _parse_record(text: str) -> dict[str, Any] | None:
    if not text.endswith("\n"):
        return None  # torn by a kill mid-write
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "custom_id" in record else None


def _should_redo(record: dict[str, Any], retry_failed: bool) -> bool:
    error = record.get("error")
    return error is not None and (retry_failed or error.get("code") in NOT_RUN_CODES)


def _rewrite(path: Path, lines: list[str]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as out:
        out.writelines(lines)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def result_record(request: InputRequest, result: TaskResult) -> dict[str, Any]:
    extra = {
        "line": request.line,
        "status": result.status.value,
        "model": result.model,
        "usage": result.usage.model_dump(),
        "cost_usd": result.cost_usd,
        "attempts": result.attempts,
        "latency_s": round(result.latency_s, 4),
    }
    if result.error is not None:
        return _record(result.custom_id, None, result.error.model_dump(exclude_none=True), extra)
    response = {"status_code": 200, "request_id": result.request_id, "body": result.body or _synthesized_body(request, result)}
    return _record(result.custom_id, response, None, extra)


def problem_record(problem: InputProblem) -> dict[str, Any]:
    extra = {"line": problem.line, "status": TaskStatus.FAILED.value}
    return _record(problem.custom_id, None, {"code": problem.code, "message": problem.message}, extra)


def not_run_record(request: InputRequest, code: str, message: str) -> dict[str, Any]:
    extra = {"line": request.line, "status": "NOT_RUN"}
    return _record(request.custom_id, None, {"code": code, "message": message}, extra)


def _record(custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None, extra: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, "response": response, "error": error, "rayfan": extra}


def _synthesized_body(request: InputRequest, result: TaskResult) -> dict[str, Any]:
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
    """Appends one line per record and flushes it, so a kill loses at most the line being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
