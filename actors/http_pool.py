"""A lean HTTP/1.1 client for the adapter's JSON POSTs: a keep-alive connection pool on
asyncio protocols, with responses parsed by httptools (llhttp, the parser inside Node.js).

Why not aiohttp's client: in one process at 2 s latency and 2,000 requests in flight,
aiohttp costs about 0.4 ms of CPU per request and its 2,000 fresh connections have all
sent their request only after 1.1 s; this pool costs about 0.12 ms and 0.5 s
(``bench/http_client.py``). It does only what the adapter needs: POST a body; read the
status, headers and body (Content-Length, chunked, or up to the close; gzip or deflate);
keep the connection for the next request; time out. No proxies, cookies or redirects
(the SDK client, which the adapter keeps for streams, has those): a proxy set in the
environment for the endpoint gets a warning, since requests here connect directly.
Errors are the built-in ``TimeoutError`` (the deadline passed) and ``ConnectionError``
(refused, dropped, or not HTTP); the caller turns them into the SDK's exceptions.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping
from typing import NamedTuple, cast

import httptools

from actors.errors import ConfigError

logger = logging.getLogger(__name__)

KEEPALIVE_S = 15.0
"""An idle connection older than this is closed rather than reused (aiohttp's default too):
servers drop idle connections, and a request written into one as it closes is lost."""

DNS_TTL_S = 10.0
"""How long a host's resolved addresses are reused; a burst of new connections resolves once."""


class HttpResponse(NamedTuple):
    status: int
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes  # decoded from gzip / deflate when the server sent it so


class HttpPool:
    """Connections to one origin, at most ``max_connections`` open; idle ones are reused newest first."""

    def __init__(self, base_url: str, headers: Mapping[str, str], *, max_connections: int, connect_timeout_s: float) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"not an http(s) URL: {url.scheme}://{url.hostname}")
        self._host = url.hostname
        if urllib.request.getproxies().get(url.scheme) and not urllib.request.proxy_bypass(self._host):
            # the proxy's URL may hold a password: name the variable, never its value
            logger.warning("%s_proxy is set, but rayfan's JSON requests to %s connect directly", url.scheme, self._host)
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._prefix = url.path.rstrip("/").encode()
        host = f"[{self._host}]" if ":" in self._host else self._host
        host_header = host if url.port is None else f"{host}:{self._port}"
        self._head = _header_block({"Host": host_header, "Accept-Encoding": "gzip, deflate", **headers})
        self._connect_timeout_s = connect_timeout_s
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._addresses: list[tuple[int, str, int]] = []
        self._addresses_until = 0.0
        self._resolving = asyncio.Lock()

    def __repr__(self) -> str:
        return f"HttpPool({self._host}:{self._port}, open={len(self._open)})"  # never the headers: they hold the key

    async def post(self, path: str, body: bytes, timeout_s: float) -> HttpResponse:
        """POST ``body`` (JSON) to the base URL's path + ``path``; the whole exchange ends by ``timeout_s``."""
        request = b"POST %s%s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s" % (self._prefix, path.encode(), self._head, len(body), body)
        async with self._slots:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            connection = self._reusable(loop.time()) or await self._connect(deadline)
            try:
                response, keep_alive = await connection.exchange(request, deadline)
            except BaseException:
                self._discard(connection)
                raise
            if keep_alive:
                connection.idle_since = loop.time()
                self._idle.append(connection)
            else:
                self._discard(connection)
        return response

    async def close(self) -> None:
        for connection in list(self._open):
            self._discard(connection)
        self._idle.clear()

    def _reusable(self, now: float) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE_S:
                return connection
            self._discard(connection)
        return None

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        error: OSError = ConnectionError(f"no address for {self._host}")
        for family, address, port in await self._resolve():
            wait_s = min(self._connect_timeout_s, deadline - loop.time())
            connecting = loop.create_connection(
                _Connection, address, port, family=family, ssl=self._ssl, server_hostname=self._host if self._ssl else None
            )
            try:
                _, connection = await asyncio.wait_for(connecting, max(wait_s, 0.0))
            except asyncio.TimeoutError:
                error = TimeoutError(f"connecting to {self._host}:{self._port} took over {wait_s:.1f} s")
                continue
            except OSError as err:  # refused, unreachable, TLS failure: try the next address
                error = err
                continue
            self._open.add(connection)
            return connection
        raise error

    async def _resolve(self) -> list[tuple[int, str, int]]:
        """The host's addresses, looked up once per ``DNS_TTL_S`` however many connect at once."""
        loop = asyncio.get_running_loop()
        async with self._resolving:
            if loop.time() >= self._addresses_until:
                found = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
                self._addresses = [(family, str(address[0]), int(address[1])) for family, _, _, _, address in found]
                self._addresses_until = loop.time() + DNS_TTL_S
            return self._addresses

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)


class _Connection(asyncio.Protocol):
    """One socket; one request at a time. The parser calls the ``on_*`` methods as bytes arrive."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[HttpResponse, bool]] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._delimited = False  # the body has a length or chunks, so the close does not end it
        self.closed = False
        self.idle_since = 0.0

    async def exchange(self, request: bytes, deadline: float) -> tuple[HttpResponse, bool]:
        """Send the request; the response and whether the connection may be reused."""
        assert self._transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_at(deadline, self._fail, TimeoutError("no complete response before the deadline"))
        try:
            self._transport.write(request)
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():  # bytes nobody asked for: the connection can't be trusted
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._fail(ConnectionError(f"the server's answer is not valid HTTP: {err}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._parser.get_status_code() and not self._delimited:
                self.on_message_complete()  # a body that runs to the close has ended
            else:
                self._fail(ConnectionError(f"the server closed the connection before answering ({exc or 'EOF'})"))

    def on_message_begin(self) -> None:
        self._headers = {}
        self._body = []
        self._delimited = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def on_headers_complete(self) -> None:
        self._delimited = "content-length" in self._headers or "transfer-encoding" in self._headers

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 or self._waiter is None or self._waiter.done():
            return  # an interim answer (100 Continue): the real one follows
        try:
            body = _decoded(b"".join(self._body), self._headers.get("content-encoding", "identity"))
        except (zlib.error, ValueError) as err:
            self._fail(ConnectionError(f"the server's answer could not be decoded: {err}"))
            return
        keep_alive = self._parser.should_keep_alive() and not self.closed
        self._waiter.set_result((HttpResponse(status, self._headers, body), keep_alive))

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self.close()


def _decoded(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("identity", ""):
        return body
    if encoding == "gzip":
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:  # some servers send raw deflate without the zlib wrapper
            return zlib.decompress(body, -zlib.MAX_WBITS)
    raise ValueError(f"unsupported content-encoding {encoding!r}")


def _header_block(headers: Mapping[str, str]) -> bytes:
    """Headers as sent; a CR or LF in one would split the request, so it is a ConfigError."""
    lines = []
    for name, value in headers.items():
        if any(char in name + value for char in "\r\n") or not name or ":" in name:
            raise ConfigError(f"header {name!r} has a line break or is malformed")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")
