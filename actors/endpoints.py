"""One function per OpenAI endpoint: turn a task into a client call and the answer into a Reply.

Every call goes through ``with_raw_response`` so the adapter sees the response headers
(request id, ``x-ratelimit-*``) as well as the parsed body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from openai import NOT_GIVEN, AsyncOpenAI

from actors.models import ChatTask, EmbeddingTask, ResponsesTask, Usage

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


def _given(value: Any) -> Any:
    return NOT_GIVEN if value is None else value


def _timeout(task: ChatTask | ResponsesTask | EmbeddingTask) -> Any:
    return _given(task.timeout_s)


def _chat_params(task: ChatTask) -> dict[str, Any]:
    return {
        "model": task.model,
        "messages": task.messages,
        "max_tokens": _given(task.max_tokens),
        "max_completion_tokens": _given(task.max_completion_tokens),
        "temperature": _given(task.temperature),
        "extra_body": task.passthrough or None,
        "timeout": _timeout(task),
    }


async def send_chat(client: AsyncOpenAI, task: ChatTask, on_delta: OnDelta) -> Reply:
    if task.stream:
        return await _stream_chat(client, task, on_delta)
    raw = await client.chat.completions.with_raw_response.create(**_chat_params(task))
    completion = raw.parse()
    choice = completion.choices[0] if completion.choices else None
    return Reply(
        text=choice.message.content if choice else None,
        finish_reason=choice.finish_reason if choice else None,
        usage=_chat_usage(completion.usage),
        model=completion.model,
        request_id=raw.headers.get("x-request-id"),
        headers=raw.headers,
        body=completion.to_dict(),
    )


async def _stream_chat(client: AsyncOpenAI, task: ChatTask, on_delta: OnDelta) -> Reply:
    raw = await client.chat.completions.with_raw_response.create(
        **_chat_params(task), stream=True, stream_options={"include_usage": True}
    )
    parts: list[str] = []
    finish_reason = None
    usage = Usage()
    model = task.model
    async with raw.parse() as stream:
        async for chunk in stream:
            model = chunk.model or model
            if chunk.usage is not None:
                usage = _chat_usage(chunk.usage)
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


async def send_responses(client: AsyncOpenAI, task: ResponsesTask, on_delta: OnDelta) -> Reply:
    raw = await client.responses.with_raw_response.create(
        model=task.model,
        input=task.input,  # type: ignore[arg-type]
        max_output_tokens=_given(task.max_output_tokens),
        temperature=_given(task.temperature),
        extra_body=task.passthrough or None,
        timeout=_timeout(task),
    )
    response = raw.parse()
    usage = response.usage
    details = usage.input_tokens_details if usage else None
    return Reply(
        text=response.output_text,
        finish_reason=response.status,
        usage=Usage(
            prompt_tokens=usage.input_tokens if usage else 0,
            completion_tokens=usage.output_tokens if usage else 0,
            cached_tokens=(details.cached_tokens or 0) if details else 0,
        ),
        model=response.model,
        request_id=raw.headers.get("x-request-id"),
        headers=raw.headers,
        body=response.to_dict(),
    )


async def send_embeddings(client: AsyncOpenAI, task: EmbeddingTask, on_delta: OnDelta) -> Reply:
    raw = await client.embeddings.with_raw_response.create(
        model=task.model,
        input=task.input,
        encoding_format="float",
        extra_body=task.passthrough or None,
        timeout=_timeout(task),
    )
    response = raw.parse()
    return Reply(
        text=None,
        finish_reason=None,
        usage=Usage(prompt_tokens=response.usage.prompt_tokens),
        model=response.model,
        request_id=raw.headers.get("x-request-id"),
        headers=raw.headers,
        body=response.to_dict(),
    )


def _chat_usage(usage: Any) -> Usage:
    if usage is None:
        return Usage()
    details = getattr(usage, "prompt_tokens_details", None)
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=(getattr(details, "cached_tokens", None) or 0) if details else 0,
    )


Sender = Callable[[AsyncOpenAI, Any, OnDelta], Awaitable[Reply]]
SENDERS: dict[str, Sender] = {"chat": send_chat, "responses": send_responses, "embeddings": send_embeddings}
