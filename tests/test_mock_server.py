"""The mock OpenAI server, driven by the real ``openai.AsyncOpenAI`` client over real HTTP.

These tests pin the wire format the rest of the suite relies on: if the mock drifts from what
the client parses, or a scripted fault stops reaching the client, something here fails.
"""

from __future__ import annotations

import asyncio
import math
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import openai
import pydantic
import pytest

from drivers.mock import MockConfig, MockServer, ReceivedRequest
from drivers.mock.rate_limits import _format_duration

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
USER = [{"role": "user", "content": "hello there friend"}]
FULL_REPLY = "Mock reply: hello there friend This is a deterministic answer from the rayfan mock server."


@pytest.fixture(scope="module")
def server() -> Iterator[MockServer]:
    with MockServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _fresh(server: MockServer) -> None:
    server.reset()


def run(make: Callable[[openai.AsyncOpenAI], Awaitable[T]], srv: MockServer, api_key: str = "sk-test") -> T:
    """Run one async scenario with a fresh client that is always closed (no unclosed-socket warnings)."""

    async def scenario() -> T:
        async with openai.AsyncOpenAI(base_url=srv.base_url, api_key=api_key, max_retries=0, timeout=5.0) as c:
            return await make(c)

    return asyncio.run(scenario())


def chat(c: openai.AsyncOpenAI, content: str = "hello there friend", **kwargs: Any) -> Awaitable[Any]:
    return c.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": content}], **kwargs)


def outcomes(srv: MockServer) -> list[str]:
    return [r.outcome for r in srv.requests()]


async def wait_for_outcome(srv: MockServer, outcome: str, timeout: float = 2.0) -> ReceivedRequest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in srv.requests() if r.outcome == outcome]
        if found:
            return found[-1]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no request with outcome {outcome!r} within {timeout}s: {outcomes(srv)}")


# --- happy paths -----------------------------------------------------------------------------


def test_chat_completion_shape_usage_and_log(server: MockServer) -> None:
    messages = [{"role": "system", "content": "be brief"}, *USER]

    async def go(c: openai.AsyncOpenAI) -> Any:
        raw = await c.chat.completions.with_raw_response.create(model="gpt-test", messages=messages)
        again = await c.chat.completions.create(model="gpt-test", messages=messages)
        return raw, raw.parse(), again

    raw, completion, again = run(go, server)
    assert raw.headers["x-request-id"].startswith("req_")
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-test"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", FULL_REPLY, "stop")
    usage = completion.usage
    assert usage is not None
    # 2 + 3 words, plus one per message; one token per reply word.
    assert (usage.prompt_tokens, usage.completion_tokens) == (7, len(FULL_REPLY.split()))
    assert usage.total_tokens == 7 + len(FULL_REPLY.split())
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert again.choices[0].message.content == FULL_REPLY  # deterministic
    [first, _] = server.requests()
    assert (first.path, first.authorization, first.outcome) == ("/v1/chat/completions", "Bearer sk-test", "ok")
    assert first.body is not None and first.body["messages"] == messages


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_truncates_with_finish_reason_length(server: MockServer, param: str) -> None:
    completion = run(lambda c: chat(c, **{param: 3}), server)
    assert completion.choices[0].message.content == "Mock reply: hello"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_streaming_with_usage_matches_non_streaming(server: MockServer) -> None:
    async def go(c: openai.AsyncOpenAI) -> tuple[list[Any], Any]:
        stream = await chat(c, stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        return chunks, await chat(c)

    chunks, plain = run(go, server)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == plain.choices[0].message.content == FULL_REPLY
    assert len(chunks) > 5  # really streamed word by word
    assert chunks[0].object == "chat.completion.chunk"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    *_, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == plain.usage.model_dump()
    assert all(ch.usage is None for ch in chunks[:-1])


def test_streaming_without_include_usage_sends_no_usage(server: MockServer) -> None:
    async def go(c: openai.AsyncOpenAI) -> list[Any]:
        return [chunk async for chunk in await chat(c, stream=True, max_tokens=2)]

    chunks = run(go, server)
    assert all(ch.choices and ch.usage is None for ch in chunks)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "Mock reply:"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_responses_api_string_and_message_input(server: MockServer) -> None:
    async def go(c: openai.AsyncOpenAI) -> tuple[Any, Any, Any]:
        plain = await c.responses.create(model="gpt-test", input="hello there friend")
        listed = await c.responses.create(
            model="gpt-test",
            input=[
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "input_text", "text": "hello there friend"}]},
            ],
        )
        short = await c.responses.create(model="gpt-test", input="hello", max_output_tokens=2)
        return plain, listed, short

    plain, listed, short = run(go, server)
    assert plain.id.startswith("resp_") and plain.object == "response" and plain.status == "completed"
    assert plain.output_text == listed.output_text == FULL_REPLY
    assert plain.output[0].content[0].annotations == []
    assert (plain.usage.input_tokens, plain.usage.output_tokens) == (4, len(FULL_REPLY.split()))
    assert plain.usage.total_tokens == 4 + len(FULL_REPLY.split())
    assert listed.usage.input_tokens == 7
    assert short.output_text == "Mock reply:" and short.usage.output_tokens == 2
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens"


def test_embeddings_are_deterministic_in_both_encodings(server: MockServer) -> None:
    async def go(c: openai.AsyncOpenAI) -> tuple[Any, Any, Any]:
        default = await c.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta gamma"])
        floats = await c.embeddings.create(model="text-embedding-3-small", input=["alpha"], encoding_format="float")
        single = await c.embeddings.create(model="text-embedding-3-small", input="beta gamma")
        return default, floats, single

    default, floats, single = run(go, server)
    sent = [r.body["encoding_format"] for r in server.requests() if r.body]
    assert sent == ["base64", "float", "base64"]  # the client asks for base64 unless told otherwise
    alpha, beta = (d.embedding for d in default.data)
    assert [d.index for d in default.data] == [0, 1]
    assert len(alpha) == 8 and alpha != beta
    assert math.isclose(math.fsum(x * x for x in alpha), 1.0, rel_tol=1e-5)
    assert floats.data[0].embedding == alpha and single.data[0].embedding == beta
    assert default.model == "text-embedding-3-small"
    assert (default.usage.prompt_tokens, default.usage.total_tokens) == (5, 5)


def test_models_list(server: MockServer) -> None:
    async def go(c: openai.AsyncOpenAI) -> list[str]:
        return [m.id async for m in c.models.list()]

    assert "gpt-4o-mini" in run(go, server)


# --- bad requests ----------------------------------------------------------------------------


def test_body_that_is_not_json_is_an_openai_shaped_400(server: MockServer) -> None:
    async def go() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.base_url}/chat/completions", data=b"{nope") as resp:
                return resp.status, await resp.json()

    status, body = asyncio.run(go())
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] is None
    assert set(body["error"]) == {"message", "type", "param", "code"}
    [entry] = server.requests()
    assert (entry.body, entry.outcome) == (None, "error:400")


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda c: c.chat.completions.create(model="m", messages=[]), "messages"),
        (lambda c: c.responses.create(model="m", extra_body={"input": None}), "input"),
        (lambda c: c.embeddings.create(model="m", input=[1, 2]), "input"),
        (lambda c: chat(c, max_tokens=0), "max_tokens"),
    ],
)
def test_invalid_bodies_are_rejected(server: MockServer, call: Callable[[Any], Awaitable[Any]], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        run(call, server)
    assert (info.value.type, info.value.param) == ("invalid_request_error", param)


@pytest.mark.parametrize("directive", ["status=418", "bogus=1", "drop hang", "times=2", "retry_after=1", "latency=x"])
def test_invalid_directive_is_a_400_that_names_the_problem(server: MockServer, directive: str) -> None:
    with pytest.raises(openai.BadRequestError, match="mock"):
        run(lambda c: chat(c, f"hi [[mock {directive}]]"), server)


# --- scripted faults -------------------------------------------------------------------------


def test_scripted_429_sends_retry_after_headers(server: MockServer) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        run(lambda c: chat(c, "hi [[mock status=429 retry_after=0.3 retry_after_ms=250]]"), server)
    err = info.value
    assert err.response.headers["retry-after"] == "0.3"
    assert err.response.headers["retry-after-ms"] == "250"
    assert (err.code, err.type) == ("rate_limit_exceeded", "requests")
    assert err.body["param"] is None
    assert outcomes(server) == ["error:429"]


def test_scripted_insufficient_quota(server: MockServer) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        run(lambda c: chat(c, "hi [[mock status=429 code=insufficient_quota]]"), server)
    assert (info.value.code, info.value.type) == ("insufficient_quota", "insufficient_quota")
    assert "retry-after" not in info.value.response.headers


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (404, openai.NotFoundError),
        (408, openai.APIStatusError),
        (409, openai.ConflictError),
        (422, openai.UnprocessableEntityError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_scripted_status_errors(server: MockServer, status: int, error: type[openai.APIStatusError]) -> None:
    with pytest.raises(error) as info:
        run(lambda c: chat(c, f"[[mock status={status}]] hi"), server)
    assert info.value.status_code == status
    assert info.value.response.headers["x-request-id"].startswith("req_")
    assert outcomes(server) == [f"error:{status}"]


def test_times_fails_first_n_sightings_of_the_same_body_then_succeeds(server: MockServer) -> None:
    prompt = "flaky [[mock status=500 times=2]]"

    async def go(c: openai.AsyncOpenAI) -> str:
        for stream in (False, True):  # the stream flag is not part of the body's identity
            with pytest.raises(openai.InternalServerError):
                await chat(c, prompt, stream=stream)
        with pytest.raises(openai.InternalServerError):
            await chat(c, "another body [[mock status=500 times=2]]")
        return (await chat(c, prompt)).choices[0].message.content

    assert run(go, server) == "Mock reply: flaky This is a deterministic answer from the rayfan mock server."
    assert outcomes(server) == ["error:500", "error:500", "error:500", "ok"]


def test_drop_is_a_connection_error(server: MockServer) -> None:
    async def go(c: openai.AsyncOpenAI) -> Any:
        with pytest.raises(openai.APIConnectionError) as info:
            await chat(c, "[[mock drop times=1]]")
        assert not isinstance(info.value, openai.APITimeoutError)
        return await chat(c, "[[mock drop times=1]]")

    assert run(go, server).choices[0].finish_reason == "stop"
    assert outcomes(server) == ["dropped", "ok"]


@pytest.mark.parametrize("stream", [False, True])
def test_invalid_json_surfaces_as_a_decode_error(server: MockServer, stream: bool) -> None:
    async def go(c: openai.AsyncOpenAI) -> list[Any]:
        response = await chat(c, "[[mock invalid_json]]", stream=stream)
        return [chunk async for chunk in response] if stream else [response]

    with pytest.raises(ValueError, match="Unterminated|Expecting"):  # json.JSONDecodeError, not an APIError
        run(go, server)
    assert outcomes(server) == ["invalid_json"]


def test_hang_is_logged_on_arrival_and_disconnected_on_client_cancel(server: MockServer) -> None:
    async def go(c: openai.AsyncOpenAI) -> None:
        task = asyncio.create_task(chat(c, "[[mock hang]]"))
        entry = await wait_for_outcome(server, "pending")
        assert entry.body is not None and "[[mock hang]]" in entry.body["messages"][0]["content"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for_outcome(server, "disconnected")

    run(go, server)


@pytest.mark.parametrize("directive", ["hang", "latency=30"])
def test_client_timeout_while_waiting_is_logged_as_disconnected(server: MockServer, directive: str) -> None:
    async def go(c: openai.AsyncOpenAI) -> None:
        with pytest.raises(openai.APITimeoutError):
            await chat(c, f"[[mock {directive}]]", timeout=0.2)
        await wait_for_outcome(server, "disconnected")

    run(go, server)
    assert outcomes(server) == ["disconnected"]


def test_latency_from_config_and_directive(server: MockServer) -> None:
    async def timed(c: openai.AsyncOpenAI, content: str) -> float:
        start = time.monotonic()
        await chat(c, content)
        return time.monotonic() - start

    assert 0.15 <= run(lambda c: timed(c, "[[mock latency=0.15]] hi"), server) < 1.0
    server.configure(latency_s=0.15)
    try:
        assert server.config.latency_s == 0.15
        assert 0.15 <= run(lambda c: timed(c, "hi"), server) < 1.0
        assert run(lambda c: timed(c, "[[mock latency=0]] hi"), server) < 0.15
    finally:
        server.configure(latency_s=0.0)


# --- rate limits -----------------------------------------------------------------------------


def test_rpm_limit_per_key_with_openai_headers() -> None:
    async def go(c: openai.AsyncOpenAI) -> list[Any]:
        return [await c.chat.completions.with_raw_response.create(model="m", messages=USER) for _ in range(2)]

    with MockServer(MockConfig(rpm_limit=2)) as srv:
        first, second = run(go, srv)
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert [r.headers["x-ratelimit-remaining-requests"] for r in (first, second)] == ["1", "0"]
        assert re.fullmatch(r"5\d(\.\d+)?s|1m0s", second.headers["x-ratelimit-reset-requests"])  # 2 requests to refill
        assert "x-ratelimit-limit-tokens" not in first.headers

        with pytest.raises(openai.RateLimitError) as info:
            run(lambda c: chat(c), srv)
        headers = info.value.response.headers
        assert 29_000 < int(headers["retry-after-ms"]) <= 30_000  # one request refills in 60/2 s
        assert headers["retry-after"] == "30"
        assert (info.value.code, info.value.type) == ("rate_limit_exceeded", "requests")
        assert headers["x-ratelimit-remaining-requests"] == "0"

        assert run(lambda c: chat(c), srv, api_key="sk-other").choices  # another key has its own bucket
        srv.configure(ratelimit_headers=False)
        quiet = run(lambda c: c.chat.completions.with_raw_response.create(model="m", messages=USER), srv, "sk-3")
        assert not any(h.startswith("x-ratelimit") for h in quiet.headers)
        srv.reset()
        assert run(lambda c: chat(c), srv).choices
        assert outcomes(srv) == ["ok"]


def test_tpm_limit_counts_prompt_plus_max_tokens() -> None:
    with MockServer(MockConfig(tpm_limit=40)) as srv:
        # "hi" = 1 word + 1 message = 2 prompt tokens; + max_tokens 30 = 32 of 40.
        hi = [{"role": "user", "content": "hi"}]
        ok = run(lambda c: c.chat.completions.with_raw_response.create(model="m", messages=hi, max_tokens=30), srv)
        assert ok.headers["x-ratelimit-remaining-tokens"] == "8"
        assert "x-ratelimit-limit-requests" not in ok.headers

        with pytest.raises(openai.RateLimitError) as info:
            run(lambda c: chat(c, "hi", max_tokens=30), srv)
        assert info.value.type == "tokens"
        assert 35_000 < int(info.value.response.headers["retry-after-ms"]) <= 36_000  # 24 tokens at 40/60 per s

        with pytest.raises(openai.RateLimitError, match="too large") as too_big:
            run(lambda c: chat(c, "hi", max_tokens=100), srv, api_key="sk-fresh")
        assert "retry-after-ms" not in too_big.value.response.headers


def test_format_duration_matches_openai() -> None:
    assert [_format_duration(s) for s in (0, 0.12, 1, 7.66, 59.9994, 360, 3725.5)] == [
        "0s", "120ms", "1s", "7.66s", "1m0s", "6m0s", "1h2m5.5s",
    ]


# --- server object and CLI -------------------------------------------------------------------


def test_configure_validates_and_requests_is_a_snapshot(server: MockServer) -> None:
    with pytest.raises(pydantic.ValidationError):
        server.configure(latency_s=-1)
    with pytest.raises(pydantic.ValidationError):
        server.configure(latency=1)
    assert server.config == MockConfig()

    run(lambda c: chat(c), server)
    snapshot = server.requests()
    snapshot[0].outcome = "tampered"
    snapshot.clear()
    assert outcomes(server) == ["ok"]


def test_cli_serves_in_the_foreground_until_sigterm() -> None:
    cmd = [sys.executable, "-m", "drivers.mock", "--port", "0", "--rpm", "100"]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", base_url), base_url

            async def go() -> Any:
                async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0) as c:
                    return await c.chat.completions.with_raw_response.create(model="m", messages=USER)

            assert asyncio.run(go()).headers["x-ratelimit-limit-requests"] == "100"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
        finally:
            proc.kill()
