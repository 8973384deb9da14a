"""Response bodies shaped like the real API's, and the renderers the server answers with."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from aiohttp import web

from drivers.mock.parsing import ERRORS, Body, Completion, Directive, Embedding

_EMBEDDING_DIM = 8
_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
_encode = json.JSONEncoder(separators=(",", ":")).encode  # compact, and skips json.dumps' per-call setup

MODELS_BODY = _encode(
    {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "rayfan-mock"} for m in _MODELS]}
).encode()
"""The ``/v1/models`` reply, encoded once."""


def _json(payload: object, headers: dict[str, str], status: int = 200) -> web.Response:
    return web.Response(
        body=_encode(payload).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def error_payload(message: str, *, type_: str, code: str | None = None, param: str | None = None) -> Body:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error(
    status: int, message: str, headers: dict[str, str], *, type_: str, code: str | None = None, param: str | None = None
) -> web.Response:
    return _json(error_payload(message, type_=type_, code=code, param=param), headers, status)


# --- bodies ---------------------------------------------------------------------------------


def _chat_usage(job: Completion) -> Body:
    prompt, completion, total = job.usage()
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _finish_reason(job: Completion) -> str:
    return "length" if job.truncated else "stop"


def _chat_completion(body: Body, job: Completion, n: int) -> Body:
    return {
        "id": f"chatcmpl-mock{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(job.output), "refusal": None},
                "logprobs": None,
                "finish_reason": _finish_reason(job),
            }
        ],
        "usage": _chat_usage(job),
        "system_fingerprint": "fp_mock",
    }


def _chat_chunks(body: Body, job: Completion, n: int) -> bytes:
    """The whole SSE stream: role, one delta per word, finish reason, optional usage, [DONE]."""
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    base: Body = {
        "id": f"chatcmpl-mock{n}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": body.get("model"),
        "system_fingerprint": "fp_mock",
    }
    if include_usage:  # the real API then sends "usage": null on every chunk but the last
        base["usage"] = None

    def chunk(delta: Body, finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return f"data: {_encode({**base, 'choices': [choice]})}\n\n"

    words = job.output
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": w if i == 0 else f" {w}"}) for i, w in enumerate(words)]
    events.append(chunk({}, _finish_reason(job)))
    if include_usage:
        events.append(f"data: {_encode({**base, 'choices': [], 'usage': _chat_usage(job)})}\n\n")
    events.append("data: [DONE]\n\n")
    return "".join(events).encode()


def _response_object(body: Body, job: Completion, n: int) -> Body:
    prompt, completion, total = job.usage()
    text = " ".join(job.output)
    return {
        "id": f"resp_mock{n}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "incomplete" if job.truncated else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if job.truncated else None,
        "error": None,
        "model": body.get("model"),
        "output": [
            {
                "type": "message",
                "id": f"msg_mock{n}",
                "status": "incomplete" if job.truncated else "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "max_output_tokens": job.limit,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": prompt,
            "output_tokens": completion,
            "total_tokens": total,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def _embedding_bytes(text: str) -> bytes:
    """A unit-length float32 vector from a hash of the text, little-endian as OpenAI's base64."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [x / 2**31 - 1.0 for x in struct.unpack(f"<{_EMBEDDING_DIM}I", digest[: 4 * _EMBEDDING_DIM])]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return struct.pack(f"<{_EMBEDDING_DIM}f", *(x / norm for x in raw))


def _embedding_list(body: Body, job: Embedding) -> Body:
    vectors = [_embedding_bytes(t) for t in job.texts]
    if job.encoding == "base64":
        encoded: list[Any] = [base64.b64encode(v).decode() for v in vectors]
    else:
        encoded = [list(struct.unpack(f"<{_EMBEDDING_DIM}f", v)) for v in vectors]
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
        "model": body.get("model"),
        "usage": {"prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens},
    }


# --- scripted faults ------------------------------------------------------------------------


def scripted_error_payload(directive: Directive) -> Body:
    assert directive.status is not None
    type_, code = ERRORS[directive.status]
    code = directive.code or code
    if code == "insufficient_quota":
        type_ = "insufficient_quota"
    return error_payload(f"Mock error {directive.status} (scripted by a [[mock]] directive).", type_=type_, code=code)


def scripted_error(directive: Directive, headers: dict[str, str]) -> web.Response:
    assert directive.status is not None
    if directive.retry_after is not None:
        headers["retry-after"] = f"{directive.retry_after:g}"
    if directive.retry_after_ms is not None:
        headers["retry-after-ms"] = f"{directive.retry_after_ms:g}"
    return _json(scripted_error_payload(directive), headers, directive.status)


def invalid_json(stream: bool, headers: dict[str, str]) -> web.Response:
    """A 200 whose payload is cut off; for streams, inside an SSE event so the client tries to parse it."""
    cut = b'{"id": "chatcmpl-mock", "choi'
    if stream:
        return web.Response(body=b"data: " + cut + b"\n\n", headers=headers, content_type="text/event-stream")
    return web.Response(body=cut, headers=headers, content_type="application/json")


async def park() -> NoReturn:
    """Wait forever; aiohttp cancels the handler (handler_cancellation) when the socket closes."""
    while True:
        await asyncio.sleep(3600)


# --- rendering: (request, body, job, request number, headers) -> response --------------------

Render = Callable[[web.Request, Body, Any, int, dict[str, str]], Awaitable[web.StreamResponse]]


async def render_chat(
    request: web.Request, body: Body, job: Completion, n: int, headers: dict[str, str]
) -> web.StreamResponse:
    if not body.get("stream"):
        return _json(_chat_completion(body, job, n), headers)
    response = web.StreamResponse(headers={**headers, "cache-control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    await response.write(_chat_chunks(body, job, n))  # one write: cheap, still one event per delta
    await response.write_eof()
    return response


def _render_json(build: Callable[[Body, Any, int], Body]) -> Render:
    async def render(request: web.Request, body: Body, job: Any, n: int, headers: dict[str, str]) -> web.StreamResponse:
        return _json(build(body, job, n), headers)

    return render


render_response = _render_json(_response_object)
render_embeddings = _render_json(lambda body, job, _n: _embedding_list(body, job))

BODIES: dict[str, Callable[[Body, Any, int], Body]] = {
    "/v1/chat/completions": _chat_completion,
    "/v1/responses": _response_object,
    "/v1/embeddings": lambda body, job, _n: _embedding_list(body, job),
}
"""The 200 answer's body for a request to each path (the Batch API's output lines carry these)."""
