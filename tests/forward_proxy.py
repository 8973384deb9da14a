"""An HTTP forward proxy for tests that connects only to 127.0.0.1, whatever host the client names.

Clients reach made-up hosts such as ``api.rayfan.test`` through it: the name is sent to the
proxy (``CONNECT api.rayfan.test:PORT``, or ``POST http://api.rayfan.test:PORT/v1/...``) and
the proxy opens 127.0.0.1:PORT. It never resolves a name and never connects elsewhere, so a
test can check that a client really used the proxy (a direct connection fails to resolve)
without any chance of reaching the network.

* ``CONNECT host:port``: answered ``200 Connection established``, then bytes are tunnelled
  both ways (TLS passes through untouched), with half-closes passed on.
* Absolute-form requests (``POST http://host:port/path HTTP/1.1``): one upstream connection
  per client connection; each request's first line is rewritten to origin form and its
  ``Proxy-Authorization``/``Proxy-Connection`` headers dropped, its body (Content-Length or
  chunked) streamed on; responses are relayed as raw bytes, so keep-alive, streaming and
  endless bodies pass through. All requests of one client connection must name the same
  host:port (as aiohttp's per-destination pooling does), else the connection is closed.
* With ``auth=(user, password)`` a request without the matching ``Proxy-Authorization: Basic``
  is answered ``407`` (and the connection closed) and recorded in ``rejected``.
"""

from __future__ import annotations

import asyncio
import base64
import urllib.parse
from typing import NamedTuple

from tests.http_wire import Head, copy_body, read_head
from tests.loop_thread import StreamServer, close_writer

__all__ = ["ForwardProxy", "ProxiedRequest"]

UPSTREAM_HOST = "127.0.0.1"
"""The only address the proxy ever connects to."""

_HOP_HEADERS = frozenset({"proxy-authorization", "proxy-connection"})
_READ_SIZE = 64 * 1024


class ProxiedRequest(NamedTuple):
    method: str
    host: str
    """As the client named it (lower case); the proxy connected to 127.0.0.1 regardless."""
    port: int


class _Refused(Exception):
    """A request the proxy will not forward; the connection is closed."""


class ForwardProxy(StreamServer):
    """Runs on its own loop in a daemon thread; ``start()``/``stop()`` or ``with ForwardProxy() as proxy``."""

    _name = "rayfan-test-proxy"

    def __init__(self, *, auth: tuple[str, str] | None = None) -> None:
        super().__init__()
        self._expected_auth = None if auth is None else base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        self._requests: list[ProxiedRequest] = []
        self._rejected: list[ProxiedRequest] = []

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("ForwardProxy is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[ProxiedRequest]:
        """Accepted requests (CONNECTs and absolute-form requests), in arrival order, recorded
        before the proxy connects upstream (so one answered 502 is listed too)."""
        with self._lock:
            return list(self._requests)

    @property
    def rejected(self) -> list[ProxiedRequest]:
        """Requests answered 407 for missing or wrong credentials."""
        with self._lock:
            return list(self._rejected)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[ProxiedRequest]:
        """Block until at least ``n`` requests were accepted; returns them."""
        self.wait_until(lambda: len(self._requests) >= n, timeout)
        return self.requests

    # -- connection handling (on the proxy's loop)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        if head is None:
            return
        try:
            request, origin_line = self._parse(head)
        except ValueError:
            await _answer(writer, 400, "Bad Request")
            return
        if not self._authorized(head):
            await copy_body(reader, head, _discard)  # read it all, so closing does not reset the 407
            self._record(self._rejected, request)
            await _answer(writer, 407, "Proxy Authentication Required", 'Proxy-Authenticate: Basic realm="rayfan-test"')
            return
        self._record(self._requests, request)
        try:
            up_reader, up_writer = await asyncio.open_connection(UPSTREAM_HOST, request.port)
        except OSError:
            await copy_body(reader, head, _discard)
            await _answer(writer, 502, "Bad Gateway")
            return
        try:
            if origin_line is None:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await _relay((reader, writer), (up_reader, up_writer))
            else:
                await self._forward(reader, writer, up_reader, up_writer, head, origin_line, request)
        finally:
            await close_writer(up_writer)

    def _parse(self, head: Head) -> tuple[ProxiedRequest, str | None]:
        """The request and its request line in origin form (None for CONNECT). ValueError if not a proxy request."""
        method, target, version = head.start_line.split(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(version)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            return ProxiedRequest(method, host.strip("[]").lower(), _port(port)), None
        url = urllib.parse.urlsplit(target)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"not an absolute http URL: {target!r}")
        origin = (url.path or "/") + (f"?{url.query}" if url.query else "")
        return ProxiedRequest(method, url.hostname, _port(url.port or 80)), f"{method} {origin} {version}"

    def _authorized(self, head: Head) -> bool:
        if self._expected_auth is None:
            return True
        scheme, _, token = (head.get("Proxy-Authorization") or "").partition(" ")
        return scheme.lower() == "basic" and token.strip() == self._expected_auth

    def _record(self, log: list[ProxiedRequest], request: ProxiedRequest) -> None:
        with self._lock:
            log.append(request)
            self._notify()

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        head: Head,
        origin_line: str,
        first: ProxiedRequest,
    ) -> None:
        """Requests flow up rewritten while responses flow down raw, until either side closes."""
        requests = asyncio.create_task(self._send_requests(reader, up_writer, head, origin_line, first))
        responses = asyncio.create_task(_pump(up_reader, writer))
        try:
            done, _ = await asyncio.wait({requests, responses}, return_when=asyncio.FIRST_COMPLETED)
            if responses in done:
                responses.result()  # upstream closed: so does the client connection
            else:
                requests.result()  # the client closed (half-closed upstream): relay the rest
                await responses
        except _Refused:
            pass
        finally:
            for task in (requests, responses):
                task.cancel()
            await asyncio.gather(requests, responses, return_exceptions=True)

    async def _send_requests(
        self,
        reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        head: Head,
        origin_line: str,
        first: ProxiedRequest,
    ) -> None:
        """Send the first (already recorded) request, then each further one the client sends."""

        async def send(data: bytes) -> None:
            up_writer.write(data)
            await up_writer.drain()

        while True:
            await send(head.encode(origin_line, drop=_HOP_HEADERS))
            await copy_body(reader, head, send)
            if (next_head := await read_head(reader)) is None:
                break
            head = next_head
            try:
                request, next_line = self._parse(head)
            except ValueError:
                raise _Refused("malformed request on a kept-alive connection") from None
            if next_line is None or request[1:] != first[1:] or not self._authorized(head):
                raise _Refused("only authorized requests to the first host:port on one connection")
            self._record(self._requests, request)
            origin_line = next_line
        _write_eof(up_writer)


async def _relay(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    """Copy both ways until both sides have closed; an error on either side ends both."""
    tasks = [asyncio.create_task(_pump(a[0], b[1])), asyncio.create_task(_pump(b[0], a[1]))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the half-close on."""
    while data := await src.read(_READ_SIZE):
        dst.write(data)
        await dst.drain()
    _write_eof(dst)


def _write_eof(writer: asyncio.StreamWriter) -> None:
    if writer.can_write_eof() and not writer.is_closing():
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass  # already gone


def _port(text: str | int) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"bad port {text!r}")
    return port


async def _discard(data: bytes) -> None:
    pass


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str, *headers: str) -> None:
    """A bodiless answer after which the proxy closes the connection."""
    lines = [f"HTTP/1.1 {status} {reason}", *headers, "Content-Length: 0", "Connection: close"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
