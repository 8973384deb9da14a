"""The fake endpoint's Batch API: ``/v1/files`` (upload, read, content) and ``/v1/batches``
(create, retrieve, cancel, list), so ``--batch-api`` runs and is tested offline.

A batch's lines are answered as the endpoints answer those bodies one by one (the same
parsing, ``[[mock ...]]`` directives and reply bodies), so its output is what a run without
``--batch-api`` would have received; a line answered with an error status goes to the error
file, as the API does. ``times=N`` counts a body alike whether it came alone or in a batch.
A ``hang`` line is never answered: its batch can only expire or be cancelled. ``drop`` and
``invalid_json`` are faults of a connection a batch does not have: they answer 500.

What a batch does and when is set by ``MockConfig.batch`` (``MockBatchConfig``), read at
every step, and each wait ends as soon as a ``configure`` changes it: validation (one URL
and one model per file, unique custom_ids, the request and byte limits, the queue's token
limit); ``in_progress`` for ``delay_s`` and while ``hold``; then every line answered,
completed, or (with lines left unanswered) ``expired`` once ``window_s`` has passed since
its creation, the rest in the error file as ``batch_expired``; ``cancel`` makes it
``cancelled`` with ``batch_cancelled`` lines. ``hold_create_answer`` keeps the create's
answer (the batch exists; a client that dies waiting never learns its id) and
``hold_download`` sends half a file's content and then waits.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic
from aiohttp import BodyPartReader, web

from drivers.mock.parsing import NO_DIRECTIVE, PARSERS, BadRequest, Body, Directive, load_json, parse_directives
from drivers.mock.replies import BODIES, error, error_payload, scripted_error_payload

BATCH_ENDPOINTS = frozenset(BODIES)
MAX_UPLOAD_BYTES = 512 * 2**20
"""The Files API's largest file."""
_DAY_S = 86_400
_YIELD_EVERY = 200
"""Lines answered between two yields to the loop, so other requests are served meanwhile."""
_EXPIRED = ("batch_expired", "This request could not be executed before the completion window expired.")
_CANCELLED = ("batch_cancelled", "This request was not executed because the batch was cancelled.")
_OPEN = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
_STEPS = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")


class MockBatchConfig(pydantic.BaseModel):
    """How the fake Batch API behaves; ``MockServer.configure(batch=MockBatchConfig(...))``."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    delay_s: float = pydantic.Field(0.0, ge=0)
    """How long a batch stays ``in_progress`` before its lines are answered."""
    hold: bool = False
    """Batches stay ``in_progress`` while true; they go on as soon as it is made false."""
    window_s: float | None = pydantic.Field(None, gt=0)
    """The completion window (the API's is 24 h): a batch with lines unanswered then expires."""
    hold_create_answer: bool = False
    """A create makes the batch, then answers only once this is false again."""
    hold_download: bool = False
    """A file's content: the first half is sent, the rest once this is false again."""
    max_requests: int = pydantic.Field(50_000, gt=0)
    max_bytes: int = pydantic.Field(200_000_000, gt=0)
    queue_tokens: int | None = pydantic.Field(None, gt=0)
    """Tokens (prompt + max output) that the open batches of one model may hold together;
    a batch beyond it fails with ``token_limit_exceeded``, as OpenAI's enqueued-token limit."""


class Submission(pydantic.BaseModel):
    """One batch created: which requests it carried."""

    batch_id: str
    model: str | None
    custom_ids: list[str]


@dataclass
class _File:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def json(self) -> Body:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


@dataclass
class _Line:
    custom_id: str
    body: Body
    raw: bytes


@dataclass
class _Batch:
    id: str
    order: int
    endpoint: str
    input_file_id: str
    metadata: dict[str, str] | None
    created_at: int
    created: float
    """``time.monotonic()`` at creation: the window is counted from it."""
    status: str = "validating"
    model: str | None = None
    lines: list[_Line] = field(default_factory=list)
    tokens: int = 0
    answered: dict[str, tuple[bool, bytes]] = field(default_factory=dict)
    """custom_id -> (answered 200, its output or error line), once answered."""
    errors: list[Body] = field(default_factory=list)
    times: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    cancel_requested: bool = False

    def json(self) -> Body:
        completed = sum(ok for ok, _ in self.answered.values())
        failed = (len(self.lines) if self.status not in _OPEN else len(self.answered)) - completed
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + _DAY_S,
            **{f"{step}_at": self.times.get(step) for step in _STEPS},
            "request_counts": {"total": len(self.lines), "completed": completed, "failed": failed},
            "metadata": self.metadata,
        }


class MockBatches:
    """Files and batches of one fake server. Its handlers and batches run on the server's loop;
    ``submissions`` may be read from any thread."""

    def __init__(
        self,
        config: Callable[[], MockBatchConfig],
        fault_applies: Callable[[str, Body, Directive], bool],
        next_number: Callable[[], int],
        refused_key: Callable[[web.Request], web.Response | None],
    ) -> None:
        self._config = config
        self._fault_applies = fault_applies
        self._next_number = next_number
        self._refused_key = refused_key
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}
        self._order = itertools.count()
        self._runs: set[asyncio.Task[None]] = set()
        self._changed: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._submissions: list[Submission] = []

    def add_routes(self, app: web.Application) -> None:
        for method, path, handler in (
            ("POST", "/v1/files", self._upload),
            ("GET", "/v1/files/{file_id}", self._file),
            ("GET", "/v1/files/{file_id}/content", self._content),
            ("POST", "/v1/batches", self._create),
            ("GET", "/v1/batches", self._list),
            ("GET", "/v1/batches/{batch_id}", self._retrieve),
            ("POST", "/v1/batches/{batch_id}/cancel", self._cancel),
        ):
            app.router.add_route(method, path, self._keyed(handler))
        app.on_cleanup.append(self._stop)

    def _keyed(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """The handler, behind the server's check of the key (a revoked one is answered 401)."""

        async def keyed(request: web.Request) -> web.StreamResponse:
            return self._refused_key(request) or await handler(request)

        return keyed

    # -- test-facing state

    def submissions(self) -> list[Submission]:
        """Every batch created (failed validations included), in order."""
        with self._lock:
            return list(self._submissions)

    def clear(self) -> None:
        """Forget every file and batch (on the server's loop); running batches are stopped."""
        for run in self._runs:
            run.cancel()
        self._runs.clear()
        self._files.clear()
        self._batches.clear()
        with self._lock:
            self._submissions.clear()
        self.changed()

    async def _stop(self, app: web.Application) -> None:
        """The server stops: so do the batches still running (a held one, a ``hang``)."""
        runs = list(self._runs)
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)

    def changed(self) -> None:
        """The config changed (on the server's loop): every wait looks at it again."""
        if self._changed is not None:
            self._changed.set()
        self._changed = None

    # -- files

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        purpose, filename, data = None, "upload.jsonl", b""
        async for part in await request.multipart():
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "purpose":
                purpose = (await part.read()).decode()
            elif part.name == "file":
                filename = part.filename or filename
                data = await part.read()  # a fake: files are as large as tests and benchmarks make them
        if purpose != "batch":
            return _invalid("The mock accepts files with purpose 'batch' only.", "purpose")
        file = self._add_file(filename, "batch", data)
        return web.json_response(file.json())

    async def _file(self, request: web.Request) -> web.StreamResponse:
        file = self._files.get(request.match_info["file_id"])
        return web.json_response(file.json()) if file else _not_found("File", request.match_info["file_id"])

    async def _content(self, request: web.Request) -> web.StreamResponse:
        file = self._files.get(request.match_info["file_id"])
        if file is None:
            return _not_found("File", request.match_info["file_id"])
        response = web.StreamResponse(headers={"content-type": "application/octet-stream"})
        response.content_length = len(file.data)
        await response.prepare(request)
        half = len(file.data) // 2
        await response.write(file.data[:half])
        await self._wait_while(lambda: self._config().hold_download)
        await response.write(file.data[half:])
        await response.write_eof()
        return response

    def _add_file(self, filename: str, purpose: str, data: bytes) -> _File:
        file = _File(f"file-mock{self._next_number()}", filename, purpose, data, int(time.time()))
        self._files[file.id] = file
        return file

    # -- batches

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = load_json(await request.read()) or {}
        endpoint, file_id = body.get("endpoint"), body.get("input_file_id")
        if endpoint not in BATCH_ENDPOINTS:
            return _invalid(f"endpoint must be one of {sorted(BATCH_ENDPOINTS)}.", "endpoint")
        if body.get("completion_window") != "24h":
            return _invalid("completion_window must be '24h'.", "completion_window")
        file = self._files.get(file_id) if isinstance(file_id, str) else None
        if file is None or file.purpose != "batch":
            return _not_found("File", str(file_id))
        metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else None
        batch = _Batch(f"batch_mock{self._next_number()}", next(self._order), endpoint, file.id, metadata, int(time.time()), time.monotonic())
        self._validate(batch, file)
        self._batches[batch.id] = batch
        with self._lock:
            self._submissions.append(Submission(batch_id=batch.id, model=batch.model, custom_ids=[line.custom_id for line in batch.lines]))
        if batch.status == "validating":
            batch.status, batch.times["in_progress"] = "in_progress", int(time.time())
            run = asyncio.get_running_loop().create_task(self._run(batch))
            self._runs.add(run)
            run.add_done_callback(self._runs.discard)
        await self._wait_while(lambda: self._config().hold_create_answer)
        return web.json_response(batch.json())

    def _validate(self, batch: _Batch, file: _File) -> None:
        """Read the file's lines into the batch, or fail it with the API's kind of errors."""
        config = self._config()
        seen: set[str] = set()
        models: set[str] = set()
        for number, raw in enumerate(file.data.splitlines(), 1):
            line = load_json(raw)
            custom_id = line.get("custom_id") if line else None
            body = line.get("body") if line else None
            if line is None or not isinstance(custom_id, str) or not isinstance(body, dict) or line.get("method") != "POST":
                batch.errors.append(_line_error("invalid_request", "Each line must be a JSON object with custom_id, method POST and body.", number))
            elif line.get("url") != batch.endpoint:
                batch.errors.append(_line_error("mismatched_endpoint", f"The url must be the batch's endpoint {batch.endpoint}.", number))
            elif custom_id in seen:
                batch.errors.append(_line_error("duplicate_custom_id", f"The custom_id {custom_id!r} appears twice.", number))
            else:
                seen.add(custom_id)
                models.add(str(body.get("model")))
                batch.lines.append(_Line(custom_id, body, raw))
                batch.tokens += _tokens(batch.endpoint, body)
        if len(models) > 1:
            batch.errors.append(_line_error("mismatched_model", "Every request in a batch must use the same model.", None))
        if not batch.lines and not batch.errors:
            batch.errors.append(_line_error("empty_file", "The input file has no requests.", None))
        if len(batch.lines) > config.max_requests or len(file.data) > config.max_bytes:
            batch.errors.append(_line_error("too_large", f"At most {config.max_requests} requests and {config.max_bytes} bytes.", None))
        batch.model = models.pop() if len(models) == 1 else None
        if not batch.errors and config.queue_tokens is not None:
            queued = sum(b.tokens for b in self._batches.values() if b.model == batch.model and b.status in _OPEN)
            if queued + batch.tokens > config.queue_tokens:
                message = (
                    f"Enqueued token limit reached for {batch.model}. Limit: {config.queue_tokens} enqueued tokens."
                    " Please try again once some in_progress batches have been completed."
                )
                batch.errors.append(_line_error("token_limit_exceeded", message, None))
        if batch.errors:
            batch.status, batch.times["failed"] = "failed", int(time.time())

    async def _run(self, batch: _Batch) -> None:
        """A batch from ``in_progress`` to its end: wait, answer, expire or be cancelled."""

        def window_ends() -> float:
            window = self._config().window_s
            return float("inf") if window is None else batch.created + window

        def open_() -> bool:
            return not batch.cancel_requested

        await self._wait_while(open_, until=lambda: min(window_ends(), batch.created + self._config().delay_s))
        await self._wait_while(lambda: open_() and self._config().hold, until=window_ends)
        if open_() and time.monotonic() < window_ends():
            for count, line in enumerate(batch.lines, 1):
                if (answer := self._answer(batch, line)) is not None:
                    batch.answered[line.custom_id] = answer
                if count % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            await self._wait_while(lambda: open_() and len(batch.answered) < len(batch.lines), until=window_ends)
        if batch.cancel_requested:
            self._end(batch, "cancelled")
        else:
            self._end(batch, "completed" if len(batch.answered) == len(batch.lines) else "expired")

    def _answer(self, batch: _Batch, line: _Line) -> tuple[bool, bytes] | None:
        """Whether the endpoint would answer the request 200, and its output or error line;
        None for a ``hang``, which is never answered."""
        path, body = batch.endpoint, line.body
        number = self._next_number()
        try:
            job = PARSERS[path](body)
            directive = parse_directives(line.raw) if b"[[mock" in line.raw else NO_DIRECTIVE
        except BadRequest as exc:
            return False, _output_line(line, number, 400, error_payload(exc.message, type_="invalid_request_error", param=exc.param))
        if directive.has_fault and self._fault_applies(path, body, directive):
            if directive.hang:
                return None
            status = directive.status or 500
            return False, _output_line(line, number, status, scripted_error_payload(directive.model_copy(update={"status": status})))
        return True, _output_line(line, number, 200, BODIES[path](body, job, number))

    def _end(self, batch: _Batch, status: str) -> None:
        """Write the output and error files and set the final status."""
        code, message = _CANCELLED if status == "cancelled" else _EXPIRED
        ok: list[bytes] = []
        failed: list[bytes] = []
        for line in batch.lines:
            answer = batch.answered.get(line.custom_id)
            if answer is None:
                error = {"code": code, "message": message}
                failed.append(_encode({"id": f"batch_req_mock{self._next_number()}", "custom_id": line.custom_id, "response": None, "error": error}))
            else:
                (ok if answer[0] else failed).append(answer[1])
        if ok:
            batch.output_file_id = self._add_file(f"{batch.id}_output.jsonl", "batch_output", b"".join(ok)).id
        if failed:
            batch.error_file_id = self._add_file(f"{batch.id}_error.jsonl", "batch_output", b"".join(failed)).id
        now = int(time.time())
        batch.times["finalizing"] = now
        batch.status, batch.times[status] = status, now

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        batch = self._batches.get(request.match_info["batch_id"])
        return web.json_response(batch.json()) if batch else _not_found("Batch", request.match_info["batch_id"])

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        batch = self._batches.get(request.match_info["batch_id"])
        if batch is None:
            return _not_found("Batch", request.match_info["batch_id"])
        if batch.status not in ("validating", "in_progress"):
            return _invalid(f"Cannot cancel a batch with status {batch.status!r}.", None, status=409)
        batch.status, batch.times["cancelling"], batch.cancel_requested = "cancelling", int(time.time()), True
        self.changed()
        return web.json_response(batch.json())

    async def _list(self, request: web.Request) -> web.StreamResponse:
        """Newest first; ``after`` is the id of the last batch of the previous page."""
        ordered = sorted(self._batches.values(), key=lambda b: b.order, reverse=True)
        after = request.query.get("after")
        if after is not None:
            ids = [b.id for b in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        limit = min(max(int(request.query.get("limit", "20")), 1), 100)
        page = ordered[:limit]
        data = [b.json() for b in page]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return web.json_response({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": len(ordered) > limit})

    # -- waiting

    async def _wait_while(self, condition: Callable[[], bool], *, until: Callable[[], float] = lambda: float("inf")) -> None:
        """Wait while ``condition()`` holds and ``until()`` (monotonic) is ahead, looking again
        whenever the config changes or a batch is cancelled: woken, never polling."""
        while condition() and (remaining := until() - time.monotonic()) > 0:
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=None if remaining == float("inf") else remaining)
            except asyncio.TimeoutError:
                pass


def _tokens(path: str, body: Body) -> int:
    """What the queue's limit counts of one request: prompt plus its most output, in mock tokens."""
    try:
        return int(PARSERS[path](body).cost)
    except BadRequest:
        return 0


def _line_error(code: str, message: str, line: int | None) -> Body:
    return {"code": code, "message": message, "param": None, "line": line}


def _output_line(line: _Line, number: int, status: int, body: Body) -> bytes:
    response = {"status_code": status, "request_id": f"req_mock{number}", "body": body}
    return _encode({"id": f"batch_req_mock{number}", "custom_id": line.custom_id, "response": response, "error": None})


def _encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


def _invalid(message: str, param: str | None, *, status: int = 400) -> web.Response:
    return error(status, message, {}, type_="invalid_request_error", param=param)


def _not_found(kind: str, name: str) -> web.Response:
    return error(404, f"No such {kind}: {name!r}.", {}, type_="invalid_request_error")
