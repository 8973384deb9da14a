"""The lean HTTP/1.1 pool against a scripted raw-socket server on 127.0.0.1, on asyncio's loop and uvloop's.

The fake OpenAI server (aiohttp) always answers well-formed HTTP with a Content-Length; this
server writes exactly the bytes a test scripts, to reach chunked and compressed bodies,
bodies that run to the close, dropped and malformed answers.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import uvloop

from actors import ConfigError, http_pool
from actors.http_pool import HttpPool

T = TypeVar("T")


class Closing(bytes):
    """An answer after which the server closes the connection."""


Answer = Callable[["Request"], Awaitable[bytes | None]]  # bytes to write (then close if Closing), or None: close unanswered


@dataclass
class Request:
    connection: int
    head: str
    body: bytes


@dataclass
class ScriptedServer:
    answer: Answer
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    peak_open: int = 0
    closed_by_client: int = 0
    port: int = 0
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        self._writers.append(writer)
        self._handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                length = int(next(line.split(":")[1] for line in head.split("\r\n") if line.lower().startswith("content-length")))
                request = Request(number, head, await reader.readexactly(length))
                self.requests.append(request)
                reply = await self._answer_unless_closed(request, reader)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if isinstance(reply, Closing):
                    break
        except asyncio.IncompleteReadError as err:
            self.closed_by_client += not err.partial
        except ConnectionError:
            self.closed_by_client += 1
        finally:
            self.open_now -= 1
            writer.close()


    async def _answer_unless_closed(self, request: Request, reader: asyncio.StreamReader) -> bytes | None:
        """The scripted answer, unless the client closes first (it never sends while it waits)."""
        answering = asyncio.ensure_future(self.answer(request))
        closing = asyncio.ensure_future(reader.read(1))
        await asyncio.wait({answering, closing}, return_when=asyncio.FIRST_COMPLETED)
        if not answering.done():
            answering.cancel()
            self.closed_by_client += 1
            return None
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)  # the reader is free again once it has stopped
        return answering.result()


def ok(body: bytes = b'{"ok": true}', *extra: str) -> bytes:
    headers = "".join(f"{line}\r\n" for line in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), headers.encode(), body)


def always(reply: bytes | None, delay_s: float = 0.0) -> Answer:
    async def answer(request: Request) -> bytes | None:
        await asyncio.sleep(delay_s)
        return reply

    return answer


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Run a test body on a fresh loop of each kind: Ray's actors run uvloop, plain scripts asyncio's."""

    def runner(coro: Coroutine[Any, Any, T]) -> T:
        loop = uvloop.new_event_loop() if request.param == "uvloop" else asyncio.new_event_loop()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()

    return runner


def pool_for(url: str, *, max_connections: int = 8, **headers: str) -> HttpPool:
    return HttpPool(url, {"Authorization": "Bearer sk-pool-secret", **headers}, max_connections=max_connections, connect_timeout_s=2.0)


def test_a_connection_is_kept_and_reused_and_the_request_is_whole(run: Any) -> None:
    async def body() -> None:
        async with ScriptedServer(always(ok(b'{"n": 1}', "X-Request-Id: req-1", "X-Ratelimit-Limit-Requests: 500"))) as server:
            pool = pool_for(server.url, **{"Content-Type": "application/json"})
            first = await pool.post("/chat/completions", b'{"a": 1}', timeout_s=5)
            second = await pool.post("/embeddings", b'{"b": 22}', timeout_s=5)
            await pool.close()
        assert (first.status, first.body) == (200, b'{"n": 1}') and second.status == 200
        assert first.headers["x-request-id"] == "req-1" and first.headers["x-ratelimit-limit-requests"] == "500"
        assert server.connections == 1 and [r.connection for r in server.requests] == [1, 1]
        head = server.requests[0].head
        assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{server.port}\r\n" in head and "Authorization: Bearer sk-pool-secret\r\n" in head
        assert "Content-Length: 8\r\n" in head and "Content-Type: application/json\r\n" in head
        assert server.requests[1].head.startswith("POST /v1/embeddings ") and server.requests[1].body == b'{"b": 22}'

    run(body())


def test_chunked_gzip_body_is_decoded_and_repeated_headers_are_joined(run: Any) -> None:
    payload = gzip.compress(b'{"choices": ["a long answer"]}')
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (payload[:7], payload[7:]))
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\nVia: a\r\nVia: b\r\n\r\n" + chunks + b"0\r\n\r\n"

    async def body() -> None:
        async with ScriptedServer(always(reply)) as server:
            pool = pool_for(server.url)
            response = await pool.post("/x", b"{}", timeout_s=5)
            again = await pool.post("/x", b"{}", timeout_s=5)
            await pool.close()
        assert response.body == again.body == b'{"choices": ["a long answer"]}'
        assert response.headers["via"] == "a, b"
        assert server.connections == 1, "a chunked answer ends at its last chunk, so the connection is reused"

    run(body())


def test_a_body_that_runs_to_the_close_is_whole_and_the_connection_is_not_reused(run: Any) -> None:
    async def answer(request: Request) -> bytes | None:
        return Closing(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"to": "the end"}') if request.connection == 1 else ok()

    async def body() -> ScriptedServer:
        async with ScriptedServer(answer) as server:
            pool = pool_for(server.url)
            first = await pool.post("/x", b"{}", timeout_s=5)
            second = await pool.post("/x", b"{}", timeout_s=5)
            await pool.close()
        assert first.body == b'{"to": "the end"}' and second.body == b'{"ok": true}'
        return server

    assert run(body()).connections == 2


def test_connection_close_gets_a_fresh_connection_and_a_drop_mid_request_is_a_connection_error(run: Any) -> None:
    replies = iter([ok(b"1", "Connection: close"), ok(b"2"), None, ok(b"4")])

    async def answer(request: Request) -> bytes | None:
        return next(replies)

    async def body() -> ScriptedServer:
        async with ScriptedServer(answer) as server:
            pool = pool_for(server.url)
            first = await pool.post("/x", b"{}", timeout_s=5)  # "Connection: close": not kept
            second = await pool.post("/x", b"{}", timeout_s=5)  # a new connection, kept idle
            with pytest.raises(ConnectionError, match="closed the connection before answering"):
                await pool.post("/x", b"{}", timeout_s=5)  # the server drops it mid-request: the caller retries
            fourth = await pool.post("/x", b"{}", timeout_s=5)
            await pool.close()
        assert [first.body, second.body, fourth.body] == [b"1", b"2", b"4"]
        return server

    assert [r.connection for r in run(body()).requests] == [1, 2, 2, 3]


def test_an_idle_connection_the_server_closed_is_replaced_without_an_error(run: Any) -> None:
    replies = iter([Closing(ok(b"1")), ok(b"2")])  # no "Connection: close": the client learns only from the close

    async def answer(request: Request) -> bytes | None:
        return next(replies)

    async def body() -> ScriptedServer:
        async with ScriptedServer(answer) as server:
            pool = pool_for(server.url)
            first = await pool.post("/x", b"{}", timeout_s=5)
            await asyncio.sleep(0.1)  # the close reaches the idle connection
            second = await pool.post("/x", b"{}", timeout_s=5)
            await pool.close()
        assert [first.body, second.body] == [b"1", b"2"]
        return server

    assert [r.connection for r in run(body()).requests] == [1, 2]


def test_idle_connections_past_keepalive_are_not_reused(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_pool, "KEEPALIVE_S", 0.0)

    async def body() -> ScriptedServer:
        async with ScriptedServer(always(ok())) as server:
            pool = pool_for(server.url)
            for _ in range(3):
                await pool.post("/x", b"{}", timeout_s=5)
            await pool.close()
        return server

    server = run(body())
    assert server.connections == 3 and server.closed_by_client >= 2


@pytest.mark.parametrize(
    "reply, message",
    [
        (None, "closed the connection before answering"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope", "could not be decoded"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}", "unsupported content-encoding 'br'"),
    ],
)
def test_bad_answers_are_connection_errors_and_the_connection_is_dropped(run: Any, reply: bytes | None, message: str) -> None:
    async def body() -> None:
        async with ScriptedServer(always(reply)) as server:
            pool = pool_for(server.url)
            with pytest.raises(ConnectionError, match=message) as caught:
                await pool.post("/x", b"{}", timeout_s=5)
            assert "sk-pool-secret" not in str(caught.value) and "sk-pool-secret" not in repr(pool)
            assert pool._idle == [] and not pool._open
            await pool.close()

    run(body())


def test_a_timeout_fails_the_request_and_closes_its_connection(run: Any) -> None:
    async def body() -> None:
        async with ScriptedServer(always(ok(), delay_s=5.0)) as server:
            pool = pool_for(server.url)
            with pytest.raises(TimeoutError):
                await pool.post("/x", b"{}", timeout_s=0.2)
            await asyncio.sleep(0.1)
            assert server.open_now == 0, "the server sees the connection close"
            await pool.close()

    run(body())


def test_cancelling_a_request_closes_its_connection(run: Any) -> None:
    async def body() -> None:
        async with ScriptedServer(always(ok(), delay_s=5.0)) as server:
            pool = pool_for(server.url)
            request = asyncio.ensure_future(pool.post("/x", b"{}", timeout_s=30))
            while not server.requests:
                await asyncio.sleep(0.01)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            await asyncio.sleep(0.1)
            assert server.open_now == 0 and not pool._open
            await pool.close()

    run(body())


def test_connection_refused_is_a_connection_error(run: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free now, and nobody listens on it

    async def body() -> None:
        pool = pool_for(f"http://127.0.0.1:{port}/v1")
        with pytest.raises(ConnectionRefusedError):
            await pool.post("/x", b"{}", timeout_s=5)

    run(body())


def test_no_more_than_max_connections_are_open_at_once(run: Any) -> None:
    async def body() -> ScriptedServer:
        async with ScriptedServer(always(ok(), delay_s=0.05)) as server:
            pool = pool_for(server.url, max_connections=2)
            responses = await asyncio.gather(*(pool.post("/x", b"{}", timeout_s=5) for _ in range(7)))
            await pool.close()
        assert [r.status for r in responses] == [200] * 7
        return server

    server = run(body())
    assert server.peak_open == 2 and server.connections == 2 and len(server.requests) == 7


def test_a_host_name_is_resolved_once_for_a_burst_of_connections(run: Any) -> None:
    async def body() -> tuple[ScriptedServer, int]:
        loop = asyncio.get_running_loop()
        lookups = 0
        resolve = loop.getaddrinfo

        async def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal lookups
            lookups += 1
            return [info for info in await resolve(*args, **kwargs) if info[0] == socket.AF_INET]

        loop.getaddrinfo = counting  # type: ignore[method-assign]
        async with ScriptedServer(always(ok(), delay_s=0.05)) as server:
            pool = pool_for(f"http://localhost:{server.port}/v1")
            await asyncio.gather(*(pool.post("/x", b"{}", timeout_s=5) for _ in range(5)))
            await pool.close()
        assert f"Host: localhost:{server.port}\r\n" in server.requests[0].head
        return server, lookups

    server, lookups = run(body())
    assert server.connections == 5 and lookups == 1


@pytest.mark.parametrize("compress", [zlib.compress, lambda data: zlib.compress(data)[2:-4]], ids=["zlib", "raw"])
def test_deflate_bodies_with_or_without_the_zlib_wrapper_are_decoded(run: Any, compress: Callable[[bytes], bytes]) -> None:
    payload = compress(b'{"deflated": true}')
    reply = b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)

    async def body() -> bytes:
        async with ScriptedServer(always(reply)) as server:
            pool = pool_for(server.url)
            response = await pool.post("/x", b"{}", timeout_s=5)
            await pool.close()
        return response.body

    assert run(body()) == b'{"deflated": true}'


@pytest.mark.parametrize(
    "url, headers",
    [("ftp://example.com/v1", {}), ("http:///v1", {}), ("http://127.0.0.1/v1", {"X-Bad": "a\r\nInjected: yes"})],
)
def test_bad_urls_and_header_injection_are_config_errors(url: str, headers: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        HttpPool(url, headers, max_connections=1, connect_timeout_s=1.0)
    assert "Injected" not in str(caught.value)


def test_a_proxy_from_the_environment_is_reported_not_used_and_not_shown(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:proxy-password@proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    with caplog.at_level("WARNING", logger="actors.http_pool"):
        HttpPool("https://api.example.com/v1", {}, max_connections=1, connect_timeout_s=1.0)
        HttpPool("https://internal.example/v1", {}, max_connections=1, connect_timeout_s=1.0)
    assert [record.getMessage() for record in caplog.records] == [
        "https_proxy is set, but rayfan's JSON requests to api.example.com connect directly"
    ]
