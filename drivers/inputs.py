"""Read a JSONL batch as a stream of requests, turning each bad line into a problem record.

Accepted lines: the OpenAI Batch API shape ``{"custom_id", "method", "url", "body"}`` and
the shorthand ``{"custom_id"?, "prompt": "..."}`` completed from ``RequestDefaults``.
A line without a custom_id gets one derived from its number and content, stable across runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from actors.errors import InvalidTask
from actors.models import AnyTask, parse_task

KIND_BY_URL = {"/v1/chat/completions": "chat", "/v1/responses": "responses", "/v1/embeddings": "embeddings"}
URL_BY_KIND = {kind: url for url, kind in KIND_BY_URL.items()}


class RequestDefaults(BaseModel):
    """What the command line fills in for the ``{"prompt": ...}`` shorthand."""

    model_config = ConfigDict(frozen=True)

    model: str | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    system: str | None = None


@dataclass(frozen=True)
class InputRequest:
    line: int
    task: AnyTask

    @property
    def custom_id(self) -> str:
        return self.task.custom_id


@dataclass(frozen=True)
class InputProblem:
    """A line that cannot be sent; it becomes an error record naming the line and reason."""

    line: int
    custom_id: str
    code: str
    message: str


def derived_custom_id(line: int, text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:12]
    return f"line{line}-{digest}"


def read_requests(path: str | Path, defaults: RequestDefaults | None = None) -> Iterator[InputRequest | InputProblem]:
    """Yield one item per non-blank line, in file order; memory does not grow with the file.

    Only custom_ids are remembered (to report duplicates), never the requests themselves.
    """
    defaults = defaults or RequestDefaults()
    seen: set[str] = set()
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            item = parse_line(number, text, defaults)
            if item.custom_id in seen:
                item = InputProblem(
                    number, item.custom_id, "duplicate_custom_id", f"line {number}: custom_id {item.custom_id!r} appeared on an earlier line"
                )
            else:
                seen.add(item.custom_id)
            yield item


def count_requests(path: str | Path) -> int:
    """Non-blank lines, each one record to be: the progress bar's total, read as a stream."""
    with open(path, "rb") as lines:
        return sum(1 for text in lines if text.strip())


def parse_line(number: int, text: str, defaults: RequestDefaults) -> InputRequest | InputProblem:
    fallback_id = derived_custom_id(number, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return InputProblem(number, fallback_id, "invalid_json", f"line {number}: not JSON ({err.msg} at column {err.colno})")
    if not isinstance(data, dict):
        return InputProblem(number, fallback_id, "invalid_line", f"line {number}: expected a JSON object, got {type(data).__name__}")
    custom_id = data.get("custom_id")
    if custom_id is None:
        custom_id = fallback_id
    elif not isinstance(custom_id, str) or not custom_id:
        return InputProblem(number, fallback_id, "invalid_line", f"line {number}: custom_id must be a non-empty string")
    try:
        fields = _task_fields(data, defaults)
        task = parse_task({**fields, "custom_id": custom_id})
    except InvalidTask as err:
        return InputProblem(number, custom_id, "invalid_request", f"line {number}: {err}")
    except _LineError as err:
        return InputProblem(number, custom_id, err.code, f"line {number}: {err}")
    return InputRequest(number, task)


class _LineError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _task_fields(data: dict[str, Any], defaults: RequestDefaults) -> dict[str, Any]:
    if "prompt" in data:
        return _shorthand_fields(data, defaults)
    url = data.get("url", "/v1/chat/completions")
    kind = KIND_BY_URL.get(url)
    if kind is None:
        raise _LineError("unknown_url", f"url {url!r} is not one of {', '.join(KIND_BY_URL)}")
    method = data.get("method", "POST")
    if method != "POST":
        raise _LineError("invalid_line", f"method {method!r}: only POST is supported")
    body = data.get("body")
    if not isinstance(body, dict):
        raise _LineError("missing_body", "no 'body' object (expected the request body of the Batch API)")
    if "kind" in body:
        raise _LineError("invalid_request", "body.kind is not an OpenAI request field")
    fields = {**body, "kind": kind}
    if defaults.model and kind != "embeddings" and "model" not in body:
        fields["model"] = defaults.model  # named here, so what is priced is what is sent
    return fields


def _shorthand_fields(data: dict[str, Any], defaults: RequestDefaults) -> dict[str, Any]:
    prompt = data["prompt"]
    if not isinstance(prompt, str) or not prompt:
        raise _LineError("invalid_request", "prompt must be a non-empty string")
    messages = [{"role": "system", "content": defaults.system}] if defaults.system else []
    messages.append({"role": "user", "content": prompt})
    fields: dict[str, Any] = {"kind": "chat", "messages": messages}
    for name in ("model", "max_tokens", "temperature"):
        value = data.get(name, getattr(defaults, name))
        if value is not None:
            fields[name] = value
    return fields
