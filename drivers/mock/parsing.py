"""Reading a request: its JSON body, what it asks for in mock tokens, and its ``[[mock ...]]`` directive.

Directives live here with the body parsing because each needs the other: a bad directive is a
400 like a bad body, and the reply echoes the prompt with its directives cut out.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic

Body = dict[str, Any]

_DIRECTIVE_RE = re.compile(r"\[\[mock\b([^\]]*)\]\]")
_REPLY_PROMPT_WORDS = 8
_REPLY_TAIL = "This is a deterministic answer from the rayfan mock server.".split()
_STREAM_KEYS = frozenset({"stream", "stream_options"})

# Scripted error statuses -> (error type, default error code), as the real API reports them.
ERRORS: dict[int, tuple[str, str | None]] = {
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


class BadRequest(Exception):
    """A request the real API would reject with 400 invalid_request_error."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(slots=True)
class Completion:
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
class Embedding:
    texts: list[str]
    encoding: str
    prompt_tokens: int

    @property
    def cost(self) -> int:
        return self.prompt_tokens


Job = Completion | Embedding
Parse = Callable[[Body], Job]

# --- bodies (plain dict access: this is the hot path) -------------------------------------


def load_json(raw: bytes) -> Body | None:
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
            raise BadRequest(f"'{name}' must be a positive integer.", name)
        return value
    return None


def _messages(value: object, param: str) -> list[Body]:
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        raise BadRequest(f"'{param}' must be a non-empty array of message objects.", param)
    return value


def _completion(messages: list[Body], limit: int | None) -> Completion:
    texts = [_text_of(m.get("content")) for m in messages]
    user_texts = [t for m, t in zip(messages, texts) if m.get("role") == "user"]
    prompt = user_texts[-1] if user_texts else texts[-1]
    return Completion(_count_tokens(texts), _reply_words(prompt), limit)


def parse_chat(body: Body) -> Completion:
    messages = _messages(body.get("messages"), "messages")
    return _completion(messages, _max_tokens(body, "max_completion_tokens", "max_tokens"))


def parse_responses(body: Body) -> Completion:
    if body.get("stream"):
        raise BadRequest("The mock server does not stream /v1/responses.", "stream")
    value = body.get("input")
    messages = [{"role": "user", "content": value}] if isinstance(value, str) else _messages(value, "input")
    return _completion(messages, _max_tokens(body, "max_output_tokens"))


def parse_embeddings(body: Body) -> Embedding:
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BadRequest("'input' must be a string or a non-empty array of strings.", "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    return Embedding(texts, encoding, _count_tokens(texts))


PARSERS: dict[str, Parse] = {"/v1/chat/completions": parse_chat, "/v1/responses": parse_responses, "/v1/embeddings": parse_embeddings}
"""How a request to each path is read (the Batch API's input lines name the path)."""


# --- directives -----------------------------------------------------------------------------


class Directive(pydantic.BaseModel):
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
    def _consistent(self) -> Directive:
        if self.status is not None and self.status not in ERRORS:
            raise ValueError(f"status must be one of {sorted(ERRORS)}")
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


NO_DIRECTIVE = Directive()


def parse_directives(raw: bytes) -> Directive:
    """Merge every ``[[mock ...]]`` in the raw body; bare words are flags (``drop`` = ``drop=true``)."""
    fields: dict[str, str | bool] = {}
    for match in _DIRECTIVE_RE.finditer(raw.decode()):
        for token in match.group(1).split():
            key, sep, value = token.partition("=")
            fields[key] = value if sep else True
    try:
        return Directive.model_validate(fields)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'directive'}: {e['msg']}" for e in exc.errors())
        raise BadRequest(f"Invalid [[mock ...]] directive: {problems}") from exc


def body_key(path: str, body: Body) -> str:
    """Identity of a request for ``times=N``: path + body, ignoring stream flags."""
    core = {k: v for k, v in body.items() if k not in _STREAM_KEYS}
    return hashlib.sha256(f"{path}\n{json.dumps(core, sort_keys=True)}".encode()).hexdigest()
