"""An OpenAI-compatible server that records every request exactly as it arrived, for wire-level assertions.

``drivers.mock`` models the API (tokens, faults, rate limits) and logs parsed bodies;
this server instead keeps what a client actually sent — method, raw path and query, header
names in their sent case and order, body bytes — and answers any request minimally but
validly, so a test can ask "which headers did the client send, and how?".

Answers (each with an ``x-request-id: req_rec<N>`` header, N from 1):

* ``POST .../chat/completions``: a ``chat.completion`` with one assistant message "ok"; with
  ``"stream": true`` an SSE stream of ``chat.completion.chunk`` events (plus a usage chunk
  when ``stream_options.include_usage``), then ``data: [DONE]``.
* ``POST .../embeddings``: one 8-dim vector per input (float list, or base64 float32 when
  ``encoding_format`` is "base64", as the ``openai`` client asks by default).
* ``POST .../responses``: a completed ``response`` whose output text is "ok".
* ``GET .../models``: a one-model list. Anything else: an OpenAI-shaped 404.
"""

from __future__ import annotations

import base64
import itertools
import json
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from drivers.loop_thread import AppThread

__all__ = ["RecordedRequest", "RecordingServer"]

Body = dict[str, Any]

_EMBEDDING_DIM = 8


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    """Raw (percent-encoded) path, without the query."""
    query: str
    """Raw query string, without the "?" ("" if none)."""
    headers: list[tuple[str, str]]
    """In order, names in the case the client sent them."""
    body: bytes
    request_id: str
    """The ``x-request-id`` the server answered with."""

    def header(self, name: str) -> str | None:
        """The first value of a header, matched case-insensitively."""
        name = name.lower()
        return next((v for n, v in self.headers if n.lower() == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


class RecordingServer(AppThread):
    """Runs on its own loop in a daemon thread; ``start()``/``stop()`` or ``with RecordingServer() as server``."""

    _name = "rayfan-test-recording-server"

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, public_host: str | None = None) -> None:
        """``public_host`` names the host in ``base_url`` (e.g. one only the test proxy resolves);
        the server always binds 127.0.0.1."""
        super().__init__(ssl_context=ssl_context)
        self._public_host = public_host
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("RecordingServer is not started")
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._public_host or '127.0.0.1'}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests were recorded; returns them."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._requests) >= n, timeout):
                raise TimeoutError(f"RecordingServer: {len(self._requests)} of {n} requests after {timeout}s")
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        request_id = f"req_rec{next(self._ids)}"
        entry = RecordedRequest(
            method=request.method,
            path=request.rel_url.raw_path,
            query=request.rel_url.raw_query_string,
            headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.raw_headers],
            body=raw,
            request_id=request_id,
        )
        with self._changed:
            self._requests.append(entry)
            self._changed.notify_all()
        return await _answer(request, raw, {"x-request-id": request_id})


async def _answer(request: web.Request, raw: bytes, headers: dict[str, str]) -> web.StreamResponse:
    path = request.path.rstrip("/")
    body = _json_object(raw)
    if request.method == "GET" and path.endswith("/models"):
        return web.json_response({"object": "list", "data": [_model("gpt-4o-mini")]}, headers=headers)
    if request.method == "POST" and body is not None:
        request_id = headers["x-request-id"]
        if path.endswith("/chat/completions"):
            if body.get("stream"):
                return await _chat_stream(request, body, request_id, headers)
            return web.json_response(_chat_completion(body, request_id), headers=headers)
        if path.endswith("/embeddings"):
            return web.json_response(_embeddings(body), headers=headers)
        if path.endswith("/responses"):
            return web.json_response(_response(body, request_id), headers=headers)
    error = {"message": f"No route for {request.method} {request.path}", "type": "invalid_request_error"}
    return web.json_response({"error": {**error, "param": None, "code": None}}, status=404, headers=headers)


def _json_object(raw: bytes) -> Body | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _model(name: str) -> Body:
    return {"id": name, "object": "model", "created": 0, "owned_by": "rayfan-test"}


_USAGE = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}


def _chat_completion(body: Body, request_id: str) -> Body:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _USAGE,
    }


async def _chat_stream(
    request: web.Request, body: Body, request_id: str, headers: dict[str, str]
) -> web.StreamResponse:
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    base: Body = {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model"),
    }
    if include_usage:
        base["usage"] = None

    def event(payload: Body) -> bytes:
        return f"data: {json.dumps(payload)}\n\n".encode()

    def chunk(delta: Body, finish_reason: str | None = None) -> bytes:
        return event(
            {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        )

    events = [chunk({"role": "assistant", "content": ""}), chunk({"content": "ok"}), chunk({}, "stop")]
    if include_usage:
        events.append(event({**base, "choices": [], "usage": _USAGE}))
    events.append(b"data: [DONE]\n\n")
    response = web.StreamResponse(headers={**headers, "cache-control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    for data in events:
        await response.write(data)
    await response.write_eof()
    return response


def _embeddings(body: Body) -> Body:
    value = body.get("input")
    count = len(value) if isinstance(value, list) else 1
    vector = [1.0] + [0.0] * (_EMBEDDING_DIM - 1)
    embedding: Any = vector
    if body.get("encoding_format") == "base64":
        embedding = base64.b64encode(struct.pack(f"<{_EMBEDDING_DIM}f", *vector)).decode()
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": embedding} for i in range(count)],
        "model": body.get("model"),
        "usage": {"prompt_tokens": count, "total_tokens": count},
    }


def _response(body: Body, request_id: str) -> Body:
    return {
        "id": f"resp_{request_id}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "model": body.get("model"),
        "output": [
            {
                "type": "message",
                "id": f"msg_{request_id}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "ok", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 1,
            "output_tokens": 1,
            "total_tokens": 2,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }
