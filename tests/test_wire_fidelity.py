"""What rayfan puts on the wire is what the official SDK sends for the same settings.

A recording server on 127.0.0.1 receives the same requests from the SDK, built the way a
user builds it (``AsyncOpenAI()`` / ``AsyncAzureOpenAI()`` reading the environment), and
from rayfan, whose settings the driver resolved from the same environment; the method,
path, query and every auth and identity header must match, for plain, streamed,
embeddings and responses requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import openai
import pytest

from actors import Adapter, ChatTask, EmbeddingTask, ResponsesTask
from drivers.cli import main
from drivers.endpoint import EndpointFlags, resolve_endpoint
from tests.recording_server import RecordedRequest, RecordingServer
from tests.test_endpoint_settings import SDK_VARIABLES

IDENTITY_HEADERS = ("authorization", "api-key", "openai-organization", "openai-project", "user-agent", "content-type", "accept")
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def recorder() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, recorder: RecordingServer) -> pytest.MonkeyPatch:
    for name in SDK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    recorder.reset()
    return monkeypatch


def _root(recorder: RecordingServer) -> str:
    return recorder.base_url.removesuffix("/v1")


CONFIGURATIONS: dict[str, dict[str, str]] = {
    "openai": {"OPENAI_API_KEY": "sk-fidelity", "OPENAI_BASE_URL": "{base}"},
    "organization and project": {
        "OPENAI_API_KEY": "sk-fidelity",
        "OPENAI_BASE_URL": "{base}",
        "OPENAI_ORG_ID": "org-fidelity",
        "OPENAI_PROJECT_ID": "proj_fidelity",
    },
    "custom headers": {
        "OPENAI_API_KEY": "sk-fidelity",
        "OPENAI_BASE_URL": "{base}",
        "OPENAI_CUSTOM_HEADERS": "X-Gateway-Token: gw-123\nX-Team: research",
    },
    "azure": {"AZURE_OPENAI_ENDPOINT": "{root}", "AZURE_OPENAI_API_KEY": "az-fidelity", "OPENAI_API_VERSION": "2024-10-21"},
}
EXTRA_HEADERS = {"custom headers": ("x-gateway-token", "x-team")}


def _set(monkeypatch: pytest.MonkeyPatch, recorder: RecordingServer, name: str) -> None:
    for variable, value in CONFIGURATIONS[name].items():
        monkeypatch.setenv(variable, value.format(base=recorder.base_url, root=_root(recorder)))


def _sdk_client(name: str) -> openai.AsyncOpenAI:
    """The SDK as its users build it: from the environment."""
    if name == "azure":
        return openai.AsyncAzureOpenAI(max_retries=0)
    return openai.AsyncOpenAI(max_retries=0)


async def _sdk_requests(client: openai.AsyncOpenAI) -> None:
    async with client:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        async for _ in stream:
            pass
        await client.embeddings.create(model="text-embedding-3-small", input="hello", encoding_format="float")
        await client.responses.create(model="gpt-4o-mini", input="hello")


def _rayfan_tasks() -> list[Any]:
    return [
        ChatTask(custom_id="chat", model="gpt-4o-mini", messages=MESSAGES, max_tokens=5),
        ChatTask(custom_id="stream", model="gpt-4o-mini", messages=MESSAGES, stream=True),
        EmbeddingTask(custom_id="embed", model="text-embedding-3-small", input="hello"),
        ResponsesTask(custom_id="responses", model="gpt-4o-mini", input="hello"),
    ]


async def _rayfan_requests() -> None:
    adapter = Adapter(endpoint=resolve_endpoint(EndpointFlags()))
    try:
        for task in _rayfan_tasks():  # one at a time: the server records them in this order
            result = await adapter.run(task)
            assert result.ok, result.error
    finally:
        await adapter.close()


def _shape(request: RecordedRequest, extra: tuple[str, ...]) -> dict[str, Any]:
    return {
        "method": request.method,
        "path": request.path,
        "query": sorted(parse_qsl(request.query, keep_blank_values=True)),
        "headers": {name: request.header(name) for name in (*IDENTITY_HEADERS, *extra)},
    }


@pytest.mark.parametrize("name", sorted(CONFIGURATIONS))
def test_the_adapter_sends_what_the_sdk_sends(clean_env: pytest.MonkeyPatch, recorder: RecordingServer, name: str) -> None:
    _set(clean_env, recorder, name)
    asyncio.run(_sdk_requests(_sdk_client(name)))
    sdk = recorder.wait_for_requests(4)
    recorder.reset()
    asyncio.run(_rayfan_requests())
    ours = recorder.wait_for_requests(4)
    extra = EXTRA_HEADERS.get(name, ())
    assert [_shape(r, extra) for r in ours] == [_shape(r, extra) for r in sdk]
    auth = ("api-key", "az-fidelity") if name == "azure" else ("authorization", "Bearer sk-fidelity")
    assert ours[0].header(auth[0]) == auth[1], "the key is there, in the SDK's header"
    if name == "azure":
        assert ours[0].path == "/openai/deployments/gpt-4o-mini/chat/completions", "the model names the deployment"
        assert ours[0].query == "api-version=2024-10-21" and ours[0].header("authorization") is None


def test_a_base_url_with_a_query_sends_it_as_the_sdks_default_query(clean_env: pytest.MonkeyPatch, recorder: RecordingServer) -> None:
    clean_env.setenv("OPENAI_API_KEY", "sk-fidelity")
    asyncio.run(_sdk_requests(openai.AsyncOpenAI(base_url=recorder.base_url, default_query={"api-version": "7"}, max_retries=0)))
    sdk = recorder.wait_for_requests(4)
    recorder.reset()
    clean_env.setenv("OPENAI_BASE_URL", recorder.base_url + "?api-version=7")
    asyncio.run(_rayfan_requests())
    ours = recorder.wait_for_requests(4)
    assert [_shape(r, ()) for r in ours] == [_shape(r, ()) for r in sdk]
    assert all(r.query == "api-version=7" for r in ours)


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("name", ["organization and project", "custom headers", "azure"])
def test_the_cli_sends_what_the_sdk_sends(clean_env: pytest.MonkeyPatch, recorder: RecordingServer, tmp_path: Path, name: str) -> None:
    """Through ``rayfan run``: the Ray workers started before these variables were set, so
    only what the driver hands over can reach the wire."""
    _set(clean_env, recorder, name)

    async def one_sdk_request() -> None:
        async with _sdk_client(name) as client:
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]

    asyncio.run(one_sdk_request())
    sdk = recorder.wait_for_requests(1)
    recorder.reset()
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 5}}
    (tmp_path / "in.jsonl").write_text(json.dumps(line) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--adapters", "1", "--rpm", "6000", "--tpm", "1000000"]) == 0
    ours = recorder.wait_for_requests(1)
    extra = EXTRA_HEADERS.get(name, ())
    assert [_shape(r, extra) for r in ours] == [_shape(r, extra) for r in sdk]
    output = out.read_text()
    assert "fidelity" not in output and "gw-123" not in output, "no key or header value in the output"
