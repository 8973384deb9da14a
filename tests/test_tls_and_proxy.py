"""HTTPS and proxies through the adapter's one transport, on asyncio's loop and uvloop's.

Certificates come from ``trustme`` (nothing committed). A trusted CA works for plain and
streamed requests; an untrusted one, a host that does not exist and a proxy that refuses
us fail at once, with their real cause and one attempt, not five retries; a handful of them
in a row stop a run, whose rest a re-run with the right CA sends. With
``HTTPS_PROXY``/``HTTP_PROXY`` set on the driver, every request goes through the proxy,
to a host name only the proxy can resolve.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from actors import Adapter, ChatTask, RetryPolicy, TaskResult
from actors.adapter.executor import STOP_AFTER
from actors.adapter.settings import EndpointSettings
from drivers import cli
from drivers.endpoint import EndpointFlags, resolve_endpoint
from drivers.mock import MockServer
from drivers.summary import ExitCode
from tests.forward_proxy import ForwardProxy
from tests.test_endpoint_settings import SDK_VARIABLES
from tests.tls import ServerTLS, make_server_tls

PROXIED_HOST = "api.rayfan.test"  # resolvable only through the test proxy
RETRIES = RetryPolicy(max_attempts=5, min_wait_s=0.0, max_wait_s=0.0)  # would retry at once: attempts show it did not
LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(scope="module")
def tls() -> ServerTLS:
    return make_server_tls()


@pytest.fixture(scope="module")
def https_server(tls: ServerTLS) -> Iterator[MockServer]:
    with MockServer(ssl_context=tls.server_context) as server:
        yield server


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in SDK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-tls-test")
    return monkeypatch


def _tasks() -> list[ChatTask]:
    messages = [{"role": "user", "content": "hello over the wire"}]
    return [ChatTask(custom_id="plain", messages=messages, max_tokens=4), ChatTask(custom_id="stream", messages=messages, stream=True)]


def _run_all(endpoint: EndpointSettings, loop: str) -> list[TaskResult]:
    async def body() -> list[TaskResult]:
        adapter = Adapter(endpoint=endpoint, retry=RETRIES)
        try:
            return [await adapter.run(task) for task in _tasks()]
        finally:
            await adapter.close()

    return LOOPS[loop](body())  # type: ignore[no-any-return]


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_trusted_ca_works_for_plain_and_streamed_requests(https_server: MockServer, tls: ServerTLS, loop: str) -> None:
    results = _run_all(EndpointSettings(base_url=https_server.base_url, api_key="sk-x", ca_pem=tls.ca_pem), loop)
    assert [(r.custom_id, r.ok, r.attempts) for r in results] == [("plain", True, 1), ("stream", True, 1)]
    assert results[1].text and results[1].usage.completion_tokens > 0


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_an_untrusted_certificate_fails_at_once_with_its_cause(https_server: MockServer, loop: str) -> None:
    https_server.reset()
    results = _run_all(EndpointSettings(base_url=https_server.base_url, api_key="sk-x"), loop)  # the system store lacks the test CA
    for result in results:
        assert result.error is not None and result.error.code == "tls_error", result.error
        assert "CERTIFICATE_VERIFY_FAILED" in result.error.message and result.attempts == 1
    assert https_server.requests() == [], "nothing reached the server"


def test_the_ca_file_the_driver_names_is_the_one_trusted(https_server: MockServer, tls: ServerTLS, clean_env: pytest.MonkeyPatch, tmp_path: Any) -> None:
    clean_env.setenv("SSL_CERT_FILE", str(tls.write_ca(tmp_path)))
    results = _run_all(resolve_endpoint(EndpointFlags(base_url=https_server.base_url)), "asyncio")
    assert all(r.ok for r in results)


def test_a_host_that_does_not_exist_fails_at_once(clean_env: pytest.MonkeyPatch) -> None:
    results = _run_all(resolve_endpoint(EndpointFlags(base_url=f"https://{PROXIED_HOST}:9/v1")), "asyncio")
    for result in results:
        assert result.error is not None and result.error.code == "connection_error" and result.attempts == 1, result.error


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_https_goes_through_the_proxy_from_the_drivers_environment(tls: ServerTLS, clean_env: pytest.MonkeyPatch, loop: str) -> None:
    with MockServer(ssl_context=tls.server_context, public_host=PROXIED_HOST) as server, ForwardProxy(auth=("rayfan", "pr0xy")) as proxy:
        clean_env.setenv("HTTPS_PROXY", proxy.url.replace("http://", "http://rayfan:pr0xy@"))
        endpoint = resolve_endpoint(EndpointFlags(base_url=server.base_url)).model_copy(update={"ca_pem": tls.ca_pem})
        results = _run_all(endpoint, loop)
        assert all(r.ok for r in results), [r.error for r in results]
        assert len(server.requests()) == 2
        assert proxy.requests and {(r.method, r.host) for r in proxy.requests} == {("CONNECT", PROXIED_HOST)}
        assert not proxy.rejected


def test_plain_http_goes_through_the_proxy_too(clean_env: pytest.MonkeyPatch) -> None:
    with MockServer(public_host=PROXIED_HOST) as server, ForwardProxy() as proxy:
        clean_env.setenv("HTTP_PROXY", proxy.url)
        results = _run_all(resolve_endpoint(EndpointFlags(base_url=server.base_url)), "asyncio")
        assert all(r.ok for r in results), [r.error for r in results]
        assert [(r.method, r.host) for r in proxy.requests] == [("POST", PROXIED_HOST)] * 2


def test_a_proxy_that_refuses_us_fails_at_once(tls: ServerTLS, clean_env: pytest.MonkeyPatch) -> None:
    with MockServer(ssl_context=tls.server_context, public_host=PROXIED_HOST) as server, ForwardProxy(auth=("rayfan", "right")) as proxy:
        clean_env.setenv("HTTPS_PROXY", proxy.url.replace("http://", "http://rayfan:wrong@"))
        endpoint = resolve_endpoint(EndpointFlags(base_url=server.base_url)).model_copy(update={"ca_pem": tls.ca_pem})
        results = _run_all(endpoint, "asyncio")
        for result in results:
            assert result.error is not None and result.error.code == "connection_error" and result.attempts == 1, result.error
            assert "wrong" not in result.error.message, "the proxy password stays secret"
        assert proxy.rejected and server.requests() == []


@pytest.mark.usefixtures("ray_session")
def test_an_untrusted_endpoint_stops_the_run_after_a_handful_and_a_rerun_with_its_ca_sends_the_rest(
    https_server: MockServer, tls: ServerTLS, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    https_server.reset()
    lines = 100
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"custom_id": f"r{i}", "prompt": f"question {i}"}) + "\n" for i in range(lines)))
    out = tmp_path / "out.jsonl"
    command = ["run", str(source), "-o", str(out), "--base-url", https_server.base_url, "--adapters", "2", "--max-in-flight", "4"]

    assert cli.main(command) == ExitCode.SOME_FAILED
    codes = [json.loads(line)["error"]["code"] for line in out.read_text().splitlines()]
    failed = codes.count("tls_error")
    assert len(codes) == lines and STOP_AFTER <= failed <= STOP_AFTER + 2 * 4, "it stopped after a handful"
    assert codes.count("endpoint_unreachable") == lines - failed, "the rest is recorded as not run"
    assert https_server.requests() == [], "no request got through the handshake"

    assert cli.main([*command, "--ca-file", str(tls.write_ca(tmp_path))]) == ExitCode.SOME_FAILED  # the tls_error ones stay
    assert len(https_server.requests()) == lines - failed, "exactly the requests never sent"
    final = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["custom_id"] for r in final) == sorted(f"r{i}" for i in range(lines)) and sum(r["error"] is None for r in final) == lines - failed
