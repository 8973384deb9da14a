"""Read a JSONL batch as a stream of requests, turning each bad line into a problem record.

Accepted lines: the OpenAI Batch API shape ``{"custom_id", "method", "url", "body"}`` and
the shorthand ``{"custom_id"?, "prompt": "..."}`` completed from ``RequestDefaults``.
A line without a custom_id gets one derived from its number and content, stable across runs.

The file is read as bytes and split on b"\\n" only, so lines are numbered as ``wc -l`` counts
them (a \\r or U+2028 inside a line does not split it); a UTF-8 BOM before line 1 is skipped.
Reading never raises on what a line holds: a line that is too long, not UTF-8 (never repaired),
not JSON (NaN and Infinity included), nested too deep, or not a request is a problem record.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from actors.errors import InvalidTask
from actors.models import AnyTask, ChatTask, ResponsesTask, parse_task

KIND_BY_URL = {"/v1/chat/completions": "chat", "/v1/responses": "responses", "/v1/embeddings": "embeddings"}
URL_BY_KIND = {kind: url for url, kind in KIND_BY_URL.items()}

MAX_LINE_BYTES = 64 * 2**20
"""A longer line is a problem record, read past in chunks: room for a request with several
base64 images, and a bound on the driver's memory however the file was made."""
MAX_DEPTH = 64
"""Deeper JSON is a problem record: far deeper than real requests (a structured-output schema
nests a few dozen levels at most), far below the recursion limit of the serialisers (json,
pickle, pydantic) that the request passes through on its way to the endpoint."""
_SKIP_CHUNK_BYTES = 2**20


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


def derived_custom_id(line: int, text: bytes) -> str:
    """``text`` is the line with its ending as text mode read it ("\\n"), so ids written by
    earlier versions still match on resume."""
    return f"line{line}-{hashlib.sha256(text).hexdigest()[:12]}"


def read_requests(
    path: str | Path, defaults: RequestDefaults | None = None, *, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[InputRequest | InputProblem]:
    """Yield one item per non-blank line, in file order; memory does not grow with the file.

    Only custom_ids are remembered (to report duplicates), never the requests themselves.
    """
    defaults = defaults or RequestDefaults()
    seen: set[str] = set()
    with open(path, "rb") as source:
        for raw in _raw_lines(source, max_line_bytes):
            item = parse_line(raw, defaults)
            if item.custom_id in seen:
                item = InputProblem(
                    raw.number, item.custom_id, "duplicate_custom_id", f"line {raw.number}: custom_id {item.custom_id!r} appeared on an earlier line"
                )
            else:
                seen.add(item.custom_id)
            yield item


def count_requests(path: str | Path, *, max_line_bytes: int = MAX_LINE_BYTES) -> int:
    """Non-blank lines, each one record to be: the progress bar's total, read as a stream."""
    with open(path, "rb") as source:
        return sum(1 for _ in _raw_lines(source, max_line_bytes))


@dataclass(frozen=True)
class RawLine:
    """One line as read: its number as ``wc -l`` counts, and its bytes without the newline."""

    number: int
    data: bytes
    """Only the first ``max_line_bytes + 1`` bytes when ``too_long``."""
    terminated: bool
    """Ended by a newline: part of the text a derived custom_id hashes, as it always was."""
    too_long: bool = False


def _raw_lines(source: io.BufferedReader, max_line_bytes: int) -> Iterator[RawLine]:
    """The non-blank lines of ``source``, split on b"\\n" only: a \\r or U+2028 inside a line is
    part of it, as for ``wc -l``. A line longer than ``max_line_bytes`` is read past in
    chunks, so no line, however long, is held whole."""
    if source.peek(len(codecs.BOM_UTF8)).startswith(codecs.BOM_UTF8):
        source.read(len(codecs.BOM_UTF8))  # what Windows editors put first; not part of line 1
    number = 0
    while chunk := source.readline(max_line_bytes + 1):
        number += 1
        terminated = chunk.endswith(b"\n")
        if not terminated and len(chunk) > max_line_bytes:
            rest = chunk
            while rest and not rest.endswith(b"\n"):
                rest = source.readline(_SKIP_CHUNK_BYTES)
            yield RawLine(number, chunk, terminated=False, too_long=True)
            continue
        data = chunk[:-1] if terminated else chunk
        if data.endswith(b"\r"):  # \r\n, or a lone \r at the end, counted as "\n" as text mode did
            data, terminated = data[:-1], True
        if data.strip():
            yield RawLine(number, data, terminated)


def parse_line(raw: RawLine, defaults: RequestDefaults) -> InputRequest | InputProblem:
    """The request on one line, or the problem that keeps it from being sent; never raises."""
    number = raw.number
    fallback_id = derived_custom_id(number, raw.data + b"\n" if raw.terminated else raw.data)
    if raw.too_long:
        limit = len(raw.data) - 1
        return InputProblem(number, fallback_id, "line_too_long", f"line {number}: longer than {limit} bytes, the most one line may hold")
    try:
        text = raw.data.decode("utf-8")
    except UnicodeDecodeError as err:
        byte = raw.data[err.start]
        return InputProblem(number, fallback_id, "invalid_utf8", f"line {number}: not UTF-8 (byte 0x{byte:02x} at column {err.start + 1})")
    try:
        data = _DECODER.decode(text)
    except json.JSONDecodeError as err:
        return InputProblem(number, fallback_id, "invalid_json", f"line {number}: not JSON ({err.msg.removesuffix(' at')} at column {err.colno})")
    except _NumberError as err:
        return InputProblem(number, fallback_id, "invalid_json", f"line {number}: {err}")
    except RecursionError:
        return InputProblem(number, fallback_id, "too_deep", f"line {number}: nested deeper than {MAX_DEPTH} levels")
    if _may_be_unsendable(text) and (problem := _unsendable(data)) is not None:
        code, message = problem
        return InputProblem(number, fallback_id, code, f"line {number}: {message}")
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
        _check_text_parts(task)
    except InvalidTask as err:
        return InputProblem(number, custom_id, "invalid_request", f"line {number}: {err}")
    except _LineError as err:
        return InputProblem(number, custom_id, err.code, f"line {number}: {err}")
    return InputRequest(number, task)


class _NumberError(ValueError):
    """A JSON number Python would read but no endpoint can take: NaN, Infinity, 1e999, 10**100."""


def _refuse_constant(name: str) -> float:
    raise _NumberError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NumberError(f"number {text[:40]} is out of range")
    return value


def _int64(text: str) -> int:
    value = int(text) if len(text) <= 20 else None  # never hand Python's int() 4,300 digits
    if value is None or not -(2**63) <= value < 2**63:
        raise _NumberError(f"integer {text[:40]}{'...' if len(text) > 40 else ''} does not fit in 64 bits")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_int64)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _may_be_unsendable(text: str) -> bool:
    """A cheap look at the text first: the walk below would double the time a line takes to read."""
    return "\\ud" in text or "\\uD" in text or text.count("[") + text.count("{") > MAX_DEPTH


def _unsendable(data: object) -> tuple[str, str] | None:
    """Why a parsed line cannot be sent though it is JSON: nested too deep for the adapter's
    serialisers, or a ``\\ud800`` escape with no partner, which is not Unicode text. Walked
    with a stack, not recursion, so depth itself cannot break the walk."""
    stack: list[tuple[object, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return "invalid_unicode", "a \\ud800-\\udfff escape without its pair is not Unicode text"
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                return "too_deep", f"nested deeper than {MAX_DEPTH} levels"
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return None


class _LineError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _task_fields(data: dict[str, Any], defaults: RequestDefaults) -> dict[str, Any]:
    if "prompt" in data:
        return _shorthand_fields(data, defaults)
    url = data.get("url", "/v1/chat/completions")
    kind = KIND_BY_URL.get(url) if isinstance(url, str) else None
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


def _check_text_parts(task: AnyTask) -> None:
    """Content parts' ``text`` must be a string, as the API says; the models pass any value
    through, and the token counter (budget, TPM reservation) reads it as text."""
    if isinstance(task, ChatTask):
        where, items = "messages", task.messages
    elif isinstance(task, ResponsesTask) and isinstance(task.input, list):
        where, items = "input", task.input
    else:
        return
    for i, item in enumerate(items):
        content = item.get("content")
        for j, part in enumerate(content if isinstance(content, list) else []):
            if isinstance(part, dict) and not isinstance(part.get("text", ""), str):
                raise _LineError("invalid_request", f"{where}.{i}.content.{j}.text: Input should be a valid string")


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
