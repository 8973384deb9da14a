"""Self-tests of the network test helpers (TLS CA, forward proxy, recording and hostile servers).

Only plain aiohttp and the stdlib act as clients here, so a failure points at a helper, not
at rayfan. Nothing sleeps: tests wait on the helpers' conditions.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response

from drivers.mock import MockServer
from tests.conftest import run
from tests.forward_proxy import ForwardProxy, ProxiedRequest
from tests.hostile_server import GZIP_BOMB_SIZE, HUGE_BODY_SIZE, HostileServer
from tests.recording_server import RecordingServer
from tests.tls import ServerTLS, make_server_tls

HOST = "api.rayfan.test"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture(scope="module")
def tls() -> ServerTLS:
    return make_server_tls()


def session(**kwargs: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=TIMEOUT, **kwargs)


# --- TLS and the CONNECT proxy ---------------------------------------------------------------


def test_https_mock_server_through_connect_proxy(tls: ServerTLS) -> None:
    with ForwardProxy() as proxy, MockServer(ssl_context=tls.server_context, public_host=HOST) as server:
        port = int(server.base_url.rsplit(":", 1)[1].split("/")[0])
        assert server.base_url == f"https://{HOST}:{port}/v1"

        async def call() -> dict[str, Any]:
            async with session() as s:
                url = f"{server.base_url}/chat/completions"
                async with s.post(url, json=CHAT, proxy=proxy.url, ssl=tls.client_context()) as r:
                    assert r.status == 200
                    body: dict[str, Any] = await r.json()
                    return body

        body = run(call())
        assert body["object"] == "chat.completion"
        assert proxy.requests == [ProxiedRequest("CONNECT", HOST, port)]
        assert [r.path for r in server.requests()] == ["/v1/chat/completions"]


def test_a_tls_client_that_never_answers_the_close_does_not_hold_the_server_open(tls: ServerTLS) -> None:
    """Stopping waits for no client: with the TLS connection's close still unanswered, the
    loop's close hung (uvloop, warnings as errors), as seen once under load in CI."""
    server = MockServer(ssl_context=tls.server_context).start()
    client = tls.client_context().wrap_socket(socket.create_connection(("127.0.0.1", server.port)), server_hostname="127.0.0.1")
    try:
        client.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer sk-x\r\n\r\n")
        assert client.recv(12).startswith(b"HTTP/1.1"), "answered, and the connection stays open (keep-alive)"
        stopping = threading.Thread(target=server.stop, daemon=True)  # the client reads nothing more
        stopping.start()
        stopping.join(timeout=60)  # a bound on a hang, not a wait for a condition
        assert not stopping.is_alive(), "the server's stop waited for the client"
    finally:
        client.close()


def test_https_direct_with_ca_file(tls: ServerTLS, tmp_path: Path) -> None:
    """The certificate covers 127.0.0.1 too, and the CA works from a file (as for SSL_CERT_FILE)."""
    client = ssl.create_default_context(cafile=str(tls.write_ca(tmp_path)))
    with MockServer(ssl_context=tls.server_context) as server:
        assert server.base_url.startswith("https://127.0.0.1:")

        async def call() -> int:
            async with session() as s, s.get(f"{server.base_url}/models", ssl=client) as r:
                await r.read()
                return r.status

        assert run(call()) == 200

        async def untrusted() -> None:  # the default trust store does not know the test CA
            async with session() as s, s.get(f"{server.base_url}/models") as r:
                await r.read()

        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            run(untrusted())


# --- absolute-form requests through the proxy ------------------------------------------------


def test_plain_http_through_proxy_keeps_alive_and_drops_proxy_headers() -> None:
    # Plain-http requests go to the proxy itself, so the header rides on them (aiohttp applies
    # proxy_headers only to CONNECT; BasicAuth/proxy_auth are deprecated in aiohttp 3.14).
    auth = {"Proxy-Authorization": aiohttp.encode_basic_auth("user", "secret")}
    with ForwardProxy(auth=("user", "secret")) as proxy, RecordingServer(public_host=HOST) as server:
        base = server.base_url
        assert base == f"http://{HOST}:{server.port}/v1"

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"model": "gpt-4o-mini", '
            yield b'"messages": [{"role": "user", "content": "chunked"}]}'

        async def calls() -> list[Any]:
            got: list[Any] = []
            async with session(proxy=proxy.url, headers=auth) as s:
                async with s.post(f"{base}/chat/completions?x=1", json=CHAT) as r:
                    got.append(await r.json())
                async with s.post(f"{base}/chat/completions", data=chunks()) as r:  # chunked upload
                    got.append(await r.json())
                stream = {**CHAT, "stream": True}
                async with s.post(f"{base}/chat/completions", json=stream) as r:
                    got.append(await r.text())
                async with s.get(f"{base}/models") as r:
                    got.append(await r.json())
            return got

        completion, chunked, stream, models = run(calls())
        assert completion["choices"][0]["message"]["content"] == "ok" == chunked["choices"][0]["message"]["content"]
        assert stream.endswith("data: [DONE]\n\n")
        assert models["object"] == "list"
        assert proxy.connections == 1  # one client connection carried all four requests
        assert proxy.requests == [ProxiedRequest(m, HOST, server.port) for m in ("POST", "POST", "POST", "GET")]
        recorded = server.wait_for_requests(4)
        assert [(r.method, r.path, r.query) for r in recorded] == [
            ("POST", "/v1/chat/completions", "x=1"),
            ("POST", "/v1/chat/completions", ""),
            ("POST", "/v1/chat/completions", ""),
            ("GET", "/v1/models", ""),
        ]
        assert recorded[1].header("Transfer-Encoding") == "chunked"
        assert recorded[1].json()["messages"][0]["content"] == "chunked"
        for r in recorded:
            assert r.header("Host") == f"{HOST}:{server.port}"
            assert r.header("Proxy-Authorization") is None


def test_proxy_answers_407_without_the_right_credentials(tls: ServerTLS) -> None:
    with (
        ForwardProxy(auth=("user", "secret")) as proxy,
        RecordingServer(public_host=HOST) as server,
        RecordingServer(ssl_context=tls.server_context, public_host=HOST) as tls_server,
    ):
        wrong = {"Proxy-Authorization": aiohttp.encode_basic_auth("user", "wrong")}
        right = {"Proxy-Authorization": aiohttp.encode_basic_auth("user", "secret")}

        async def plain(headers: dict[str, str]) -> int:
            url = f"{server.base_url}/chat/completions"
            async with session(headers=headers) as s, s.post(url, json=CHAT, proxy=proxy.url) as r:
                await r.read()
                return r.status

        async def tunnel(headers: dict[str, str]) -> int:
            async with session() as s:
                url = f"https://{HOST}:{tls_server.port}/v1/models"
                async with s.get(url, proxy=proxy.url, proxy_headers=headers, ssl=tls.client_context()) as r:
                    await r.read()
                    return r.status

        assert run(plain({})) == 407
        assert run(plain(wrong)) == 407
        with pytest.raises(aiohttp.ClientHttpProxyError) as raised:
            run(tunnel({}))
        assert raised.value.status == 407
        assert proxy.requests == []
        assert [r.method for r in proxy.rejected] == ["POST", "POST", "CONNECT"]
        assert server.requests == [] == tls_server.requests
        assert run(tunnel(right)) == 200 == run(plain(right))
        assert [r.method for r in proxy.requests] == ["CONNECT", "POST"]


def test_proxy_answers_502_for_a_closed_port_and_stops_with_open_connections() -> None:
    with socket.socket() as probe:  # a port nothing listens on (bound, then released)
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with ForwardProxy() as proxy, HostileServer("endless_chunked") as server:

        async def calls() -> int:
            async with session() as s:
                with pytest.raises(aiohttp.ClientHttpProxyError) as raised:
                    async with s.get(f"https://{HOST}:{closed_port}/", proxy=proxy.url):
                        pass
                assert raised.value.status == 502
                url = f"http://{HOST}:{server.port}/v1/chat/completions"
                async with s.post(url, json=CHAT, proxy=proxy.url) as r:  # an endless body, relayed
                    return len(await r.content.readexactly(1 << 20))

        assert run(calls()) == 1 << 20
        server.wait_idle()  # the client left, so the proxy closed upstream and the writer stopped
        proxy.wait_idle()
        assert proxy.requests == [
            ProxiedRequest("CONNECT", HOST, closed_port),
            ProxiedRequest("POST", HOST, server.port),
        ]
        with socket.create_connection(("127.0.0.1", proxy.port)) as idle:  # open across stop()
            proxy.wait_until(lambda: proxy.open_connections == 1)
            proxy.stop()
            assert idle.recv(1) == b""  # stop() closed it


# --- the recording server --------------------------------------------------------------------


def test_recording_server_records_the_wire_and_answers_like_openai(tls: ServerTLS) -> None:
    with RecordingServer(ssl_context=tls.server_context) as server:
        base = server.base_url
        assert base.startswith("https://127.0.0.1:")
        headers = {"X-Custom-Case": "Value", "x-lower": "v", "Authorization": "Bearer sk-test"}

        async def calls() -> list[Any]:
            got: list[Any] = []
            async with session(headers=headers) as s:
                ctx = tls.client_context()
                async with s.post(f"{base}/chat/completions?a=1&b=%20x", json=CHAT, ssl=ctx) as r:
                    got.append((r.headers["x-request-id"], await r.json()))
                stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
                async with s.post(f"{base}/chat/completions", json=stream, ssl=ctx) as r:
                    assert r.content_type == "text/event-stream"
                    got.append(await r.text())
                for encoding in ("float", "base64"):
                    body = {"model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": encoding}
                    async with s.post(f"{base}/embeddings", json=body, ssl=ctx) as r:
                        got.append(await r.json())
                async with s.post(f"{base}/responses", json={"model": "gpt-4o-mini", "input": "hi"}, ssl=ctx) as r:
                    got.append(await r.json())
            return got

        (request_id, completion), stream, floats, b64, response = run(calls())

    chat = ChatCompletion.model_validate(completion)
    assert (chat.model, chat.choices[0].message.content, chat.choices[0].finish_reason) == ("gpt-4o-mini", "ok", "stop")
    assert chat.usage is not None and chat.usage.total_tokens == 2
    events = [line.removeprefix("data: ") for line in stream.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 1
    assert len(CreateEmbeddingResponse.model_validate(floats).data) == 2
    assert len(b64["data"]) == 2 and isinstance(b64["data"][0]["embedding"], str)
    parsed = Response.model_validate(response)
    assert parsed.output_text == "ok"
    assert parsed.usage is not None and (parsed.usage.input_tokens, parsed.usage.output_tokens) == (1, 1)

    first = server.requests[0]
    assert (first.method, first.path, first.query, first.request_id) == (
        "POST",
        "/v1/chat/completions",
        "a=1&b=%20x",
        request_id,
    )
    names = [name for name, _ in first.headers]
    assert "X-Custom-Case" in names and "x-lower" in names  # the case as sent
    assert first.header("x-custom-case") == "Value"
    assert json.loads(first.body) == CHAT
    assert [r.path for r in server.requests] == ["/v1/chat/completions"] * 2 + ["/v1/embeddings"] * 2 + [
        "/v1/responses"
    ]


# --- the hostile server ----------------------------------------------------------------------


def test_hostile_ok_keeps_alive_and_redirect_is_followable() -> None:
    with HostileServer() as server:

        async def calls() -> list[aiohttp.ClientResponse]:
            async with session() as s:
                responses = []
                for url in (server.base_url, server.base_url, server.url_for("redirect")):
                    async with s.post(f"{url}/chat/completions", json=CHAT) as r:
                        assert (await r.json())["choices"][0]["message"]["content"] == "ok"
                        responses.append(r)
                return responses

        plain, _, redirected = run(calls())
        assert plain.status == 200 and not plain.history
        assert [h.status for h in redirected.history] == [307]
        assert str(redirected.url).endswith("/ok/v1/chat/completions")
        assert server.requests_for("ok") == 3 and server.requests_for("redirect") == 1
        assert server.connections == 1 == server.connections_for("ok")  # all four on one connection
        assert server.requests[-1].target == "/ok/v1/chat/completions"
        assert json.loads(server.requests[-1].body) == CHAT  # a 307 resends the body


def test_hostile_cut_responses_fail_the_client() -> None:
    with HostileServer("headers_cut") as server:

        async def call(url: str) -> bytes:
            async with session() as s, s.post(f"{url}/chat/completions", json=CHAT) as r:
                assert r.status == 200
                return await r.read()

        with pytest.raises(aiohttp.ClientError):
            run(call(server.base_url))
        with pytest.raises(aiohttp.ClientPayloadError):
            run(call(server.url_for("body_cut")))
        assert server.requests_for("headers_cut") == 1 == server.requests_for("body_cut")
        server.wait_idle()


def test_hostile_huge_body_and_gzip_bomb() -> None:
    with HostileServer() as server:

        async def calls() -> tuple[int, int, bytes]:
            async with session(auto_decompress=False) as s:
                total = 0
                async with s.post(f"{server.url_for('huge_body')}/chat/completions", json=CHAT) as r:
                    length = int(r.headers["Content-Length"])
                    async for chunk in r.content.iter_chunked(1 << 20):
                        total += len(chunk)
                async with s.post(f"{server.url_for('gzip_bomb')}/chat/completions", json=CHAT) as r:
                    assert r.headers["Content-Encoding"] == "gzip"
                    return length, total, await r.read()

        length, total, bomb = run(calls())
        assert length == total == HUGE_BODY_SIZE
        assert len(bomb) < 2 * 1024 * 1024
        inflater = zlib.decompressobj(wbits=31)
        assert inflater.decompress(bomb, 1 << 20) == b" " * (1 << 20)
        assert not inflater.eof
        assert struct.unpack("<I", bomb[-4:])[0] == GZIP_BOMB_SIZE  # the size the gzip trailer promises
        assert server.requests_for("huge_body") == 1 == server.requests_for("gzip_bomb")


def test_hostile_endless_chunked_stops_when_the_client_leaves() -> None:
    with HostileServer("endless_chunked") as server:

        async def call() -> int:
            async with session() as s, s.post(f"{server.base_url}/chat/completions", json=CHAT) as r:
                assert r.headers["Transfer-Encoding"] == "chunked"
                return len(await r.content.readexactly(4 << 20))

        assert run(call()) == 4 << 20
        server.wait_idle()  # the writer noticed the close and ended its connection
        assert server.requests_for("endless_chunked") == 1
