"""A small, deterministic fake of the OpenAI HTTP API (aiohttp) for tests, demos and benchmarks.

It speaks real HTTP on 127.0.0.1 (HTTPS when given an ``ssl_context``) so the real ``openai``
client, its retries, timeouts and connection handling are exercised end to end, with no key
and no network.

Content is deterministic. The token count of a text is its number of whitespace-separated
words, plus one per message (a fake, not a tokenizer). The reply is built from the first
words of the last user message; ``max_tokens`` (one word = one token) truncates it.

Faults are scripted by a directive anywhere in the prompt text, ``[[mock key=value flag ...]]``:

* ``status=429|500|503|400|401|404|408|409|422``: an OpenAI-shaped error. ``code=`` overrides
  the error code (``code=insufficient_quota`` also sets that type); ``retry_after=S`` and
  ``retry_after_ms=MS`` send the ``retry-after`` / ``retry-after-ms`` headers as given.
* ``drop``: close the connection without answering (the client sees a connection error).
* ``hang``: never answer; the request is logged as "disconnected" when the client gives up.
* ``invalid_json``: 200 with a body that is not JSON (for streams: an SSE event that is not).
* ``times=N``: the fault applies only to the first N times this exact body (ignoring the
  stream flags) is seen, then the request succeeds.
* ``latency=S``: this request's latency, instead of ``MockConfig.latency_s``.

Per request the order is: validate (400), latency, rate limits (429), scripted fault, reply.
Optional per-key RPM/TPM limits use rayfan's own continuous token buckets, refilled at
limit/60 per second and holding ``rate_window_s`` of the limit (60: a minute's burst at
once; 1: the limit metered per second, as OpenAI may), and answer 429 with OpenAI's headers.

Run ``python -m drivers.mock_server --port N [--latency S] [--rpm N] [--tpm N]
[--rate-window S] [--certfile PEM --keyfile PEM]`` to serve in the foreground, over HTTPS
with a certificate (prints the base URL, stops on SIGINT/SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import math
import re
import signal
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import pydantic
from aiohttp import web

from actors.bucket import TokenBucket
from actors.process_gc import tune_for_many_open_requests
from drivers.loop_thread import AppThread

try:
    from uvloop import new_event_loop
except ImportError:  # uvloop is not built for Windows
    from asyncio import new_event_loop

__all__ = ["MockConfig", "MockServer", "ReceivedRequest", "main"]

Body = dict[str, Any]

LOG_LIMIT = 10_000
"""The log keeps only the most recent requests, so long benchmarks don't grow memory."""

_ACCEPT_BACKLOG = 4096
_EMBEDDING_DIM = 8
_REPLY_PROMPT_WORDS = 8
_REPLY_TAIL = "This is a deterministic answer from the rayfan mock server.".split()
_DIRECTIVE_RE = re.compile(r"\[\[mock\b([^\]]*)\]\]")
_STREAM_KEYS = frozenset({"stream", "stream_options"})
_MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
_encode = json.JSONEncoder(separators=(",", ":")).encode  # compact, and skips json.dumps' per-call setup
_MODELS_BODY = _encode(
    {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "rayfan-mock"} for m in _MODELS]}
).encode()

# Scripted error statuses -> (error type, default error code), as the real API reports them.
_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout", None),
    409: ("invalid_request_error", "conflict"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}


class MockConfig(pydantic.BaseModel):
    """Server-wide behaviour. Frozen: ``MockServer.configure`` swaps in a new validated copy."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    latency_s: float = pydantic.Field(0.0, ge=0)
    """Added before every response, per request."""
    rpm_limit: int | None = pydantic.Field(None, gt=0)
    """Requests per minute, enforced per API key (Authorization header)."""
    tpm_limit: int | None = pydantic.Field(None, gt=0)
    """Tokens per minute per key; a request costs prompt tokens + its max output tokens."""
    rate_window_s: float = pydantic.Field(60.0, gt=0, le=60)
    """The window the per-minute limits are enforced over: a bucket holds this much of the
    limit and refills at the limit (60: a minute's burst at once; 1: metered per second)."""
    ratelimit_headers: bool = True
    """Send OpenAI's ``x-ratelimit-*`` headers when a limit is set."""
    headers_show_minute: bool = False
    """Headers describe a full minute's bucket even when ``rate_window_s`` is shorter, as a
    server that hides its per-second metering does: only its 429s tell."""
    revoked_keys: frozenset[str] = frozenset()
    """API keys answered 401 ``invalid_api_key``, as a revoked key is (checked after the latency)."""


class ReceivedRequest(pydantic.BaseModel):
    """One log entry, recorded on arrival so tests can see requests that never get answered."""

    path: str
    body: dict[str, Any] | None
    authorization: str | None
    received_at: float
    """``time.monotonic()`` on arrival."""
    outcome: str
    """"pending" until answered, then "ok", "error:<status>", "dropped", "invalid_json",
    or "disconnected" (the client closed the connection before the response)."""


@dataclass(slots=True)
class _Entry:
    """The live log record: a cheap slotted object per request, turned into ReceivedRequest on read."""

    path: str
    body: Body | None
    authorization: str | None
    received_at: float
    outcome: str = "pending"

    def snapshot(self) -> ReceivedRequest:
        return ReceivedRequest.model_construct(
            path=self.path,
            body=self.body,
            authorization=self.authorization,
            received_at=self.received_at,
            outcome=self.outcome,
        )


class _Directive(pydantic.BaseModel):
    """A parsed ``[[mock ...]]`` directive. Only built for requests that contain one."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    status: int | None = None
    code: str | None = None
    retry_after: float | None = pydantic.Field(None, ge=0)
    retry_after_ms: float | None = pydantic.Field(None, ge=0)
    drop: bool = False
    hang: bool = False
    invalid_json: bool = False
    times: int | None = pydantic.Field(None, ge=0)
    latency: float | None = pydantic.Field(None, ge=0)

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> _Directive:
        if self.status is not None and self.status not in _ERRORS:
            raise ValueError(f"status must be one of {sorted(_ERRORS)}")
        faults = (self.status is not None) + self.drop + self.hang + self.invalid_json
        if faults > 1:
            raise ValueError("use at most one of status=, drop, hang, invalid_json")
        if not faults and self.times is not None:
            raise ValueError("times= needs a fault (status=, drop, hang or invalid_json)")
        if self.status is None and (self.code, self.retry_after, self.retry_after_ms) != (None, None, None):
            raise ValueError("code=, retry_after= and retry_after_ms= need status=")
        return self

    @property
    def has_fault(self) -> bool:
        return self.status is not None or self.drop or self.hang or self.invalid_json


_NO_DIRECTIVE = _Directive()


class _BadRequest(Exception):
    """A request the real API would reject with 400 invalid_request_error."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(slots=True)
class _Completion:
    """What a chat or responses request asks for, in mock tokens (words)."""

    prompt_tokens: int
    words: list[str]
    limit: int | None

    @property
    def truncated(self) -> bool:
        return self.limit is not None and self.limit < len(self.words)

    @property
    def output(self) -> list[str]:
        return self.words[: self.limit] if self.truncated else self.words

    @property
    def cost(self) -> int:
        """Tokens charged against TPM: prompt plus the most the reply may use, as OpenAI does."""
        return self.prompt_tokens + (self.limit if self.limit is not None else len(self.words))

    def usage(self) -> tuple[int, int, int]:
        completion = len(self.output)
        return self.prompt_tokens, completion, self.prompt_tokens + completion


@dataclass(slots=True)
class _Embedding:
    texts: list[str]
    encoding: str
    prompt_tokens: int

    @property
    def cost(self) -> int:
        return self.prompt_tokens


Job = _Completion | _Embedding

# --- request parsing (plain dict access: this is the hot path) -----------------------------


def _load_json(raw: bytes) -> Body | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _text_of(content: object) -> str:
    """Text of a message ``content``: a string or a list of parts with ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _count_tokens(texts: list[str]) -> int:
    """Mock tokens: words plus one per message."""
    return sum(len(t.split()) for t in texts) + len(texts)


def _reply_words(prompt: str) -> list[str]:
    """Deterministic reply: echoes the prompt's first words, long enough for truncation tests."""
    if "[[mock" in prompt:
        prompt = _DIRECTIVE_RE.sub(" ", prompt)
    return ["Mock", "reply:", *prompt.split()[:_REPLY_PROMPT_WORDS], *_REPLY_TAIL]


def _max_tokens(body: Body, *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if type(value) is not int or value < 1:
            raise _BadRequest(f"'{name}' must be a positive integer.", name)
        return value
    return None


def _messages(value: object, param: str) -> list[Body]:
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise _BadRequest(f"'{param}' must be a non-empty array of message objects.", param)
    return value


def _completion(messages: list[Body], limit: int | None) -> _Completion:
    texts = [_text_of(m.get("content")) for m in messages]
    user_texts = [t for m, t in zip(messages, texts) if m.get("role") == "user"]
    prompt = user_texts[-1] if user_texts else texts[-1]
    return _Completion(_count_tokens(texts), _reply_words(prompt), limit)


def _parse_chat(body: Body) -> _Completion:
    messages = _messages(body.get("messages"), "messages")
    return _completion(messages, _max_tokens(body, "max_completion_tokens", "max_tokens"))


def _parse_responses(body: Body) -> _Completion:
    if body.get("stream"):
        raise _BadRequest("The mock server does not stream /v1/responses.", "stream")
    value = body.get("input")
    messages = [{"role": "user", "content": value}] if isinstance(value, str) else _messages(value, "input")
    return _completion(messages, _max_tokens(body, "max_output_tokens"))


def _parse_embeddings(body: Body) -> _Embedding:
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise _BadRequest("'input' must be a string or a non-empty array of strings.", "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise _BadRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    return _Embedding(texts, encoding, _count_tokens(texts))


def _parse_directives(raw: bytes) -> _Directive:
    """Merge every ``[[mock ...]]`` in the raw body; bare words are flags (``drop`` = ``drop=true``)."""
    fields: dict[str, str | bool] = {}
    for match in _DIRECTIVE_RE.finditer(raw.decode()):
        for token in match.group(1).split():
            key, sep, value = token.partition("=")
            fields[key] = value if sep else True
    try:
        return _Directive.model_validate(fields)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'directive'}: {e['msg']}" for e in exc.errors())
        raise _BadRequest(f"Invalid [[mock ...]] directive: {problems}") from exc


def _body_key(path: str, body: Body) -> str:
    """Identity of a request for ``times=N``: path + body, ignoring stream flags."""
    core = {k: v for k, v in body.items() if k not in _STREAM_KEYS}
    return hashlib.sha256(f"{path}\n{json.dumps(core, sort_keys=True)}".encode()).hexdigest()


# --- response bodies ------------------------------------------------------------------------


def _json(payload: object, headers: dict[str, str], status: int = 200) -> web.Response:
    return web.Response(
        body=_encode(payload).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
    )


def _error(
    status: int, message: str, headers: dict[str, str], *, type_: str, code: str | None = None, param: str | None = None
) -> web.Response:
    return _json({"error": {"message": message, "type": type_, "param": param, "code": code}}, headers, status)


def _chat_usage(job: _Completion) -> Body:
    prompt, completion, total = job.usage()
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _finish_reason(job: _Completion) -> str:
    return "length" if job.truncated else "stop"


def _chat_completion(body: Body, job: _Completion, n: int) -> Body:
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


def _chat_chunks(body: Body, job: _Completion, n: int) -> bytes:
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


def _response_object(body: Body, job: _Completion, n: int) -> Body:
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


def _embedding_list(body: Body, job: _Embedding) -> Body:
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


# --- rate limiting --------------------------------------------------------------------------


def _format_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset format (Go durations): "120ms", "1s", "7.66s", "6m0s"."""
    ms = _ceil_ms(seconds)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    minutes, ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    return f"{minutes}m{secs}" if minutes else secs


def _ceil_ms(seconds: float) -> int:
    """Whole milliseconds, rounded up so a client waiting this long is never early."""
    return math.ceil(round(seconds * 1000, 6))


@dataclass(slots=True)
class _Admission:
    headers: dict[str, str]
    wait_s: float  # 0 = admitted; inf = larger than the limit itself
    kind: str  # the bucket that decided: "requests" or "tokens"
    limit: int


@dataclass(slots=True)
class _Limit:
    """One key's buckets for one dimension: the one enforced, and a minute's for the headers."""

    per_minute: int
    window_s: float
    enforced: TokenBucket
    minute: TokenBucket

    @classmethod
    def new(cls, per_minute: int, window_s: float) -> _Limit:
        rate = per_minute / 60.0
        return cls(per_minute, window_s, TokenBucket(rate * window_s, rate), TokenBucket(per_minute, rate))


class _RateLimiter:
    """Per-key limits over ``MockConfig.rate_window_s`` (see the module doc), with
    ``actors.bucket.TokenBucket``: a request larger than the window waits for a full bucket
    and leaves it in debt, one larger than the per-minute limit never fits.

    The limits are read per call, so ``configure`` takes effect at once; buckets start full.
    """

    def __init__(self) -> None:
        self._limits: dict[tuple[str, str], _Limit] = {}

    def clear(self) -> None:
        self._limits.clear()

    def admit(self, key: str, cost: int, config: MockConfig) -> _Admission:
        """Take 1 request and ``cost`` tokens if both buckets have them; else say how long to wait."""
        wants = [(kind, limit, n) for kind, limit, n in (("requests", config.rpm_limit, 1), ("tokens", config.tpm_limit, cost)) if limit]
        limits = [self._limit(key, kind, per_minute, config.rate_window_s) for kind, per_minute, _ in wants]
        waits = [limit.enforced.time_until(n) if n <= per_minute else math.inf for (_, per_minute, n), limit in zip(wants, limits)]
        worst = max(range(len(waits)), key=waits.__getitem__)
        if not waits[worst]:
            for (_, _, n), limit in zip(wants, limits):
                limit.enforced.take(n)
                limit.minute.take(n)
        headers = {}
        if config.ratelimit_headers:
            for (kind, per_minute, _), limit in zip(wants, limits):
                shown = limit.minute if config.headers_show_minute else limit.enforced
                level = shown.level()
                headers[f"x-ratelimit-limit-{kind}"] = str(per_minute)
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(math.floor(level), 0))
                headers[f"x-ratelimit-reset-{kind}"] = _format_duration((shown.capacity - level) / shown.refill_per_s)
        return _Admission(headers, waits[worst], wants[worst][0], wants[worst][1])

    def _limit(self, key: str, kind: str, per_minute: int, window_s: float) -> _Limit:
        limit = self._limits.get((key, kind))
        if limit is None or (limit.per_minute, limit.window_s) != (per_minute, window_s):
            limit = self._limits[(key, kind)] = _Limit.new(per_minute, window_s)
        return limit


def _rate_limited(admission: _Admission, cost: int, headers: dict[str, str]) -> web.Response:
    kind, limit = admission.kind, admission.limit
    if math.isinf(admission.wait_s):
        message = f"Request too large for {kind} per min: Limit {limit}, Requested {cost}."
        return _error(429, message, headers, type_=kind, code="rate_limit_exceeded")
    ms = _ceil_ms(admission.wait_s)
    headers["retry-after-ms"] = str(ms)
    headers["retry-after"] = str(math.ceil(ms / 1000))
    wait = _format_duration(ms / 1000)
    message = f"Rate limit reached for {kind} per min: Limit {limit}. Please try again in {wait}."
    return _error(429, message, headers, type_=kind, code="rate_limit_exceeded")


def _scripted_error(directive: _Directive, headers: dict[str, str]) -> web.Response:
    assert directive.status is not None
    type_, code = _ERRORS[directive.status]
    code = directive.code or code
    if code == "insufficient_quota":
        type_ = "insufficient_quota"
    if directive.retry_after is not None:
        headers["retry-after"] = f"{directive.retry_after:g}"
    if directive.retry_after_ms is not None:
        headers["retry-after-ms"] = f"{directive.retry_after_ms:g}"
    message = f"Mock error {directive.status} (scripted by a [[mock]] directive)."
    return _error(directive.status, message, headers, type_=type_, code=code)


def _invalid_json(stream: bool, headers: dict[str, str]) -> web.Response:
    """A 200 whose payload is cut off; for streams, inside an SSE event so the client tries to parse it."""
    cut = b'{"id": "chatcmpl-mock", "choi'
    if stream:
        return web.Response(body=b"data: " + cut + b"\n\n", headers=headers, content_type="text/event-stream")
    return web.Response(body=cut, headers=headers, content_type="application/json")


async def _park() -> NoReturn:
    """Wait forever; aiohttp cancels the handler (handler_cancellation) when the socket closes."""
    while True:
        await asyncio.sleep(3600)


# --- rendering: (request, body, job, request number, headers) -> response --------------------

Parse = Callable[[Body], Job]
Render = Callable[[web.Request, Body, Any, int, dict[str, str]], Awaitable[web.StreamResponse]]


async def _render_chat(
    request: web.Request, body: Body, job: _Completion, n: int, headers: dict[str, str]
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


_render_response = _render_json(_response_object)
_render_embeddings = _render_json(lambda body, job, _n: _embedding_list(body, job))


# --- the server -----------------------------------------------------------------------------


class MockServer(AppThread):
    """Runs the app on its own event loop in a daemon thread so sync code (pytest fixtures, the CLI) can use it."""

    _name = "rayfan-mock-server"
    _new_loop = staticmethod(new_event_loop)

    def __init__(
        self,
        config: MockConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        public_host: str | None = None,
    ) -> None:
        """``ssl_context`` serves HTTPS; ``public_host`` names the host in ``base_url`` (e.g. one
        only a test proxy resolves) while the server still binds ``host``."""
        super().__init__(host=host, port=port, ssl_context=ssl_context)
        self.config = config or MockConfig()
        self._public_host = public_host
        self._lock = threading.Lock()  # guards the log, fault counters and rate buckets
        self._log: deque[_Entry] = deque(maxlen=LOG_LIMIT)
        self._seen: dict[str, int] = {}
        self._limiter = _RateLimiter()
        self._ids = itertools.count(1)
        self._answering = 0
        self._peak_answering = 0

    # -- lifecycle (start/stop/with from LoopThread)

    @property
    def base_url(self) -> str:
        if self._runner is None:
            raise RuntimeError("MockServer is not started")
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._public_host or self._host}:{self.port}/v1"

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        return app

    async def _open(self, *, backlog: int = _ACCEPT_BACKLOG, handler_cancellation: bool = True) -> None:
        """A deep accept queue, as real endpoints have: at aiohttp's default of 128, a batch
        opening thousands of connections at once loses SYNs and waits a second to resend
        them. Handler cancellation: a client disconnect cancels its handler, so waits end
        and are logged."""
        await super()._open(backlog=backlog, handler_cancellation=handler_cancellation)

    # -- test-facing state

    def configure(self, **changes: Any) -> None:
        """Validate and swap in a new config; in-flight requests keep the one they started with."""
        with self._lock:
            self.config = MockConfig.model_validate({**self.config.model_dump(), **changes})

    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return [entry.snapshot() for entry in self._log]

    @property
    def peak_in_flight(self) -> int:
        """The most requests (chat, responses, embeddings) being answered at once since the last reset."""
        with self._lock:
            return self._peak_answering

    def reset(self) -> None:
        with self._lock:
            self._peak_answering = self._answering
            self._log.clear()
            self._seen.clear()
            self._limiter.clear()

    # -- handlers

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, _parse_chat, _render_chat)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, _parse_responses, _render_response)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, _parse_embeddings, _render_embeddings)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        self._finish(self._record(request, None), "ok")
        return web.Response(body=_MODELS_BODY, content_type="application/json")

    async def _serve(self, request: web.Request, parse: Parse, render: Render) -> web.StreamResponse:
        """Log on arrival, answer, then log the outcome; a cancellation means the client left."""
        raw = await request.read()
        entry = self._record(request, _load_json(raw))
        self._count_answering(+1)
        try:
            response = await self._answer(request, raw, entry, parse, render)
        except asyncio.CancelledError:
            self._finish(entry, "disconnected")
            raise
        finally:
            self._count_answering(-1)
        self._finish(entry, "ok" if response.status == 200 else f"error:{response.status}")
        return response

    async def _answer(
        self, request: web.Request, raw: bytes, entry: _Entry, parse: Parse, render: Render
    ) -> web.StreamResponse:
        body = entry.body
        n = next(self._ids)
        headers = {"x-request-id": f"req_mock{n}"}
        if body is None:
            return _error(400, "The request body is not a JSON object.", headers, type_="invalid_request_error")
        try:
            job = parse(body)
            directive = _parse_directives(raw) if b"[[mock" in raw else _NO_DIRECTIVE
        except _BadRequest as exc:
            return _error(400, exc.message, headers, type_="invalid_request_error", param=exc.param)
        config = self.config
        latency = config.latency_s if directive.latency is None else directive.latency
        if latency:
            await asyncio.sleep(latency)
        if config.revoked_keys and request.headers.get("Authorization", "").removeprefix("Bearer ") in config.revoked_keys:
            return _error(401, "Incorrect API key provided (revoked).", headers, type_="invalid_request_error", code="invalid_api_key")
        if config.rpm_limit or config.tpm_limit:
            key = request.headers.get("Authorization", "")
            with self._lock:
                admission = self._limiter.admit(key, job.cost, config)
            headers.update(admission.headers)
            if admission.wait_s:
                return _rate_limited(admission, job.cost, headers)
        if directive.has_fault and self._fault_applies(request.path, body, directive):
            return await self._fault(request, body, directive, headers, entry)
        return await render(request, body, job, n, headers)

    def _fault_applies(self, path: str, body: Body, directive: _Directive) -> bool:
        if directive.times is None:
            return True
        key = _body_key(path, body)
        with self._lock:
            seen = self._seen.get(key, 0)
            self._seen[key] = seen + 1
        return seen < directive.times

    async def _fault(
        self, request: web.Request, body: Body, directive: _Directive, headers: dict[str, str], entry: _Entry
    ) -> web.StreamResponse:
        if directive.drop:
            self._finish(entry, "dropped")
            if request.transport is not None:
                request.transport.close()
            await _park()
        if directive.hang:
            await _park()
        if directive.invalid_json:
            self._finish(entry, "invalid_json")
            return _invalid_json(bool(body.get("stream")), headers)
        return _scripted_error(directive, headers)

    # -- log

    def _record(self, request: web.Request, body: Body | None) -> _Entry:
        entry = _Entry(request.path, body, request.headers.get("Authorization"), time.monotonic())
        with self._lock:
            self._log.append(entry)
        return entry

    def _count_answering(self, change: int) -> None:
        with self._lock:
            self._answering += change
            self._peak_answering = max(self._peak_answering, self._answering)

    def _finish(self, entry: _Entry, outcome: str) -> None:
        """Set the outcome once: the first final outcome (e.g. "dropped") wins."""
        with self._lock:
            if entry.outcome == "pending":
                entry.outcome = outcome


# --- foreground CLI -------------------------------------------------------------------------


async def _serve_until_signalled(server: MockServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server._open()
    print(server.base_url, flush=True)
    try:
        await stop.wait()
    finally:
        await server._close()


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground, e.g. for benchmarks that need the server in another process."""
    parser = argparse.ArgumentParser(prog="python -m drivers.mock_server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added before every response")
    parser.add_argument("--rpm", type=int, default=None, help="requests-per-minute limit per API key")
    parser.add_argument("--tpm", type=int, default=None, help="tokens-per-minute limit per API key")
    parser.add_argument("--rate-window", type=float, default=60.0, metavar="S", help="enforce the limits over S seconds (default 60; 1 = per second)")
    parser.add_argument("--certfile", default=None, help="PEM certificate chain: serve HTTPS (needs --keyfile)")
    parser.add_argument("--keyfile", default=None, help="PEM private key of --certfile")
    args = parser.parse_args(argv)
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("--certfile and --keyfile go together")
    config = MockConfig(latency_s=args.latency, rpm_limit=args.rpm, tpm_limit=args.tpm, rate_window_s=args.rate_window)
    ssl_context = None
    if args.certfile is not None:
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_context.load_cert_chain(args.certfile, args.keyfile)
    tune_for_many_open_requests()  # its own process: thousands of open requests in benchmarks
    loop = new_event_loop()
    try:
        loop.run_until_complete(_serve_until_signalled(MockServer(config, port=args.port, ssl_context=ssl_context)))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
