"""One function per OpenAI endpoint: turn a task into a request and the answer into a Reply.

Plain requests go through ``Connection.post_json`` and their answers are read as dicts
(the Batch output wants the body as JSON anyway) by ``READERS``, which also read the bodies
of a Batch API output file; streamed chat uses the SDK's typed streaming. Either way,
failures are the SDK's exceptions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import openai

from actors.adapter.transport import Connection
from actors.models import AnyTask, ChatTask, EmbeddingTask, ResponsesTask, Usage

OnDelta = Callable[[str], None]


@dataclass(frozen=True)
class Reply:
    text: str | None
    finish_reason: str | None
    usage: Usage
    model: str
    request_id: str | None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None  # the server's JSON, kept for Batch-API-shaped output


def request_body(task: AnyTask) -> dict[str, Any]:
    """The JSON body the server receives: the task's fields minus rayfan's own."""
    body = task.model_dump(exclude_none=True, exclude={"custom_id", "kind", "timeout_s", "metadata", "stream"})
    if task.kind == "embeddings":
        body.setdefault("encoding_format", "float")
    return body


async def _post(connection: Connection, path: str, task: AnyTask) -> tuple[dict[str, Any], Mapping[str, str]]:
    return await connection.post_json(path, request_body(task), task.timeout_s)


async def send_chat(connection: Connection, task: ChatTask, on_delta: OnDelta) -> Reply:
    if task.stream:
        return await _stream_chat(connection, task, on_delta)
    body, headers = await _post(connection, "/chat/completions", task)
    return read_chat(body, headers, task.model)


def read_chat(body: dict[str, Any], headers: Mapping[str, str], model: str) -> Reply:
    choice = body["choices"][0] if body.get("choices") else {}
    usage = body.get("usage") or {}
    return Reply(
        text=(choice.get("message") or {}).get("content"),
        finish_reason=choice.get("finish_reason"),
        usage=Usage(
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0,
        ),
        model=body.get("model", model),
        request_id=headers.get("x-request-id"),
        headers=headers,
        body=body,
    )


async def _stream_chat(connection: Connection, task: ChatTask, on_delta: OnDelta) -> Reply:
    timeout = openai.NOT_GIVEN if task.timeout_s is None else task.timeout_s
    raw = await connection.client.chat.completions.with_raw_response.create(
        **request_body(task), stream=True, stream_options={"include_usage": True}, timeout=timeout
    )
    parts: list[str] = []
    finish_reason = None
    usage = Usage()
    model = task.model
    async with raw.parse() as stream:
        async for chunk in stream:
            model = chunk.model or model
            if chunk.usage is not None:
                details = chunk.usage.prompt_tokens_details
                usage = Usage(
                    prompt_tokens=chunk.usage.prompt_tokens,
                    completion_tokens=chunk.usage.completion_tokens,
                    cached_tokens=(details.cached_tokens or 0) if details else 0,
                )
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                    on_delta(choice.delta.content)
                finish_reason = choice.finish_reason or finish_reason
    return Reply(
        text="".join(parts),
        finish_reason=finish_reason,
        usage=usage,
        model=model,
        request_id=raw.headers.get("x-request-id"),
        headers=raw.headers,
    )


async def send_responses(connection: Connection, task: ResponsesTask, on_delta: OnDelta) -> Reply:
    body, headers = await _post(connection, "/responses", task)
    return read_response(body, headers, task.model)


def read_response(body: dict[str, Any], headers: Mapping[str, str], model: str) -> Reply:
    usage = body.get("usage") or {}
    return Reply(
        text=_output_text(body),
        finish_reason=body.get("status"),
        usage=Usage(
            prompt_tokens=usage.get("input_tokens", 0),
            completion_tokens=usage.get("output_tokens", 0),
            cached_tokens=(usage.get("input_tokens_details") or {}).get("cached_tokens") or 0,
        ),
        model=body.get("model", model),
        request_id=headers.get("x-request-id"),
        headers=headers,
        body=body,
    )


def _output_text(body: dict[str, Any]) -> str:
    """What the SDK's ``Response.output_text`` gives: every output_text part, joined."""
    return "".join(
        part.get("text", "")
        for item in body.get("output") or []
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )


async def send_embeddings(connection: Connection, task: EmbeddingTask, on_delta: OnDelta) -> Reply:
    body, headers = await _post(connection, "/embeddings", task)
    return read_embeddings(body, headers, task.model)


def read_embeddings(body: dict[str, Any], headers: Mapping[str, str], model: str) -> Reply:
    return Reply(
        text=None,
        finish_reason=None,
        usage=Usage(prompt_tokens=(body.get("usage") or {}).get("prompt_tokens", 0)),
        model=body.get("model", model),
        request_id=headers.get("x-request-id"),
        headers=headers,
        body=body,
    )


Sender = Callable[[Connection, Any, OnDelta], Awaitable[Reply]]
SENDERS: dict[str, Sender] = {"chat": send_chat, "responses": send_responses, "embeddings": send_embeddings}
Reader = Callable[[dict[str, Any], Mapping[str, str], str], Reply]
READERS: dict[str, Reader] = {"chat": read_chat, "responses": read_response, "embeddings": read_embeddings}
"""An answer's body read into a Reply, by request kind (``model``: the task's, when the body names none):
the same reading for a body the adapter received and one a Batch API output file holds."""
