"""A raw-socket HTTP server on 127.0.0.1 that misbehaves on purpose, to test a client's defences.

A real endpoint (or something in between) can redirect, cut a response short, send far more
than asked, or never stop; aiohttp servers will not produce those bytes, so this one writes
them itself. Each request gets one behaviour:

* ``ok``: a valid chat completion JSON (Content-Length), keep-alive.
* ``redirect``: 307 to the same path under ``/ok/`` (so a client that follows it succeeds), keep-alive.
* ``headers_cut``: part of the status line and headers, then close.
* ``body_cut``: ``Content-Length: 1000``, 10 body bytes, then close.
* ``huge_body``: a valid 50 MiB JSON object (Content-Length), streamed in chunks, then close.
* ``gzip_bomb``: ``Content-Encoding: gzip`` of 1 GiB of spaces, about 1 MB on the wire, then close.
* ``endless_chunked``: ``Transfer-Encoding: chunked`` chunks of spaces until the client leaves.

The behaviour is the server's ``behaviour`` unless the request path starts with a segment
naming another one: ``url_for("gzip_bomb")`` is ``http://127.0.0.1:PORT/gzip_bomb/v1``, so
``.../gzip_bomb/v1/chat/completions`` gets the bomb from a server whose default is ``ok``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import struct
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Literal, get_args

from tests.http_wire import read_body, read_head
from tests.loop_thread import StreamServer

__all__ = ["BEHAVIOURS", "Behaviour", "HostileRequest", "HostileServer", "gzip_bomb_payload"]

Behaviour = Literal["ok", "redirect", "headers_cut", "body_cut", "huge_body", "gzip_bomb", "endless_chunked"]
BEHAVIOURS: tuple[Behaviour, ...] = get_args(Behaviour)

HUGE_BODY_SIZE = 50 * 1024 * 1024
GZIP_BOMB_SIZE = 1024 * 1024 * 1024
"""Decompressed size of the bomb."""

_CHUNK = 64 * 1024
_SPACES = b" " * _CHUNK
_KEEP_ALIVE = frozenset({"ok", "redirect"})


@dataclass(frozen=True)
class HostileRequest:
    connection: int
    """1 for the server's first connection, and so on."""
    behaviour: Behaviour
    method: str
    target: str
    """The request target as sent (path and query)."""
    body: bytes


@functools.cache
def gzip_bomb_payload() -> bytes:
    """A gzip member that inflates to ``GZIP_BOMB_SIZE`` spaces, about 1 MB, built in ~0.3 s.

    One MiB of spaces is deflated once, ending in a full flush (byte-aligned, no reference
    back past its start), so that segment can be repeated to make a valid stream without
    compressing a GiB; a final empty block and the CRC-32/size trailer close it.
    """
    block = b" " * (1024 * 1024)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeats = GZIP_BOMB_SIZE // len(block)
    crc = 0
    for _ in range(repeats):
        crc = zlib.crc32(block, crc)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip, deflate, no name, mtime 0, max compression, unknown OS
    return header + segment * repeats + end + struct.pack("<II", crc, GZIP_BOMB_SIZE % 2**32)


class HostileServer(StreamServer):
    """Runs on its own loop in a daemon thread; ``start()``/``stop()`` or ``with HostileServer("body_cut") as s``."""

    _name = "rayfan-test-hostile-server"

    def __init__(self, behaviour: Behaviour = "ok") -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}")
        super().__init__()
        self.behaviour = behaviour
        self._log: list[HostileRequest] = []

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: requests get the server's own behaviour."""
        return self.url_for(None)

    def url_for(self, behaviour: Behaviour | None) -> str:
        """A base URL whose requests get ``behaviour`` (None: the server's own)."""
        if not self.port:
            raise RuntimeError("HostileServer is not started")
        prefix = "" if behaviour is None else f"/{behaviour}"
        return f"http://127.0.0.1:{self.port}{prefix}/v1"

    @property
    def requests(self) -> list[HostileRequest]:
        with self._lock:
            return list(self._log)

    def requests_for(self, behaviour: Behaviour) -> int:
        """How many requests got ``behaviour``."""
        return Counter(r.behaviour for r in self.requests)[behaviour]

    def connections_for(self, behaviour: Behaviour) -> int:
        """How many connections carried at least one request that got ``behaviour``."""
        return len({r.connection for r in self.requests if r.behaviour == behaviour})

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[HostileRequest]:
        """Block until at least ``n`` requests have arrived; returns them."""
        self.wait_until(lambda: len(self._log) >= n, timeout)
        return self.requests

    # -- connection handling (on the server's loop)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            connection = self._connections
        while (head := await read_head(reader)) is not None:
            method, target, _ = head.start_line.split(" ", 2)
            body = await read_body(reader, head)
            behaviour, rest = self._choose(target)
            with self._lock:
                self._log.append(HostileRequest(connection, behaviour, method, target, body))
                self._notify()
            await _BEHAVIOURS[behaviour](writer, rest, body)
            await writer.drain()
            if behaviour not in _KEEP_ALIVE or not head.keep_alive:
                return

    def _choose(self, target: str) -> tuple[Behaviour, str]:
        """The request's behaviour and its target without a behaviour segment."""
        segment, _, rest = target.lstrip("/").partition("/")
        for behaviour in BEHAVIOURS:
            if segment == behaviour:
                return behaviour, "/" + rest
        return self.behaviour, target


def _head(status: str, *headers: str) -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *headers]) + "\r\n\r\n").encode("latin-1")


async def _ok(writer: asyncio.StreamWriter, target: str, body: bytes) -> None:
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        model = None
    payload = json.dumps(
        {
            "id": "chatcmpl-hostile",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "ok"},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()
    head = _head(
        "200 OK", "Content-Type: application/json", f"Content-Length: {len(payload)}", "x-request-id: req_hostile"
    )
    writer.write(head + payload)


async def _redirect(writer: asyncio.StreamWriter, target: str, body: bytes) -> None:
    writer.write(_head("307 Temporary Redirect", f"Location: /ok{target}", "Content-Length: 0"))


async def _headers_cut(writer: asyncio.StreamWriter, target: str, body: bytes) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: applica")


async def _body_cut(writer: asyncio.StreamWriter, target: str, body: bytes) -> None:
    writer.write(_head("200 OK", "Content-Type: application/json", "Content-Length: 1000") + b'{"id": "ch')


async def _huge_body(writer: asyncio.StreamWriter, target: str, body: bytes) -> None:
    prefix, suffix = b'{"pad": "', b'"}'
    writer.write(
        _head("200 OK", "Content-Type: application/json", f"Content-Length: {HUGE_BODY_SIZE}", "Connection: close")
    )
    writer.write(prefix)
    remaining = HUGE_BODY_SIZE - len(prefix) - len(suffix)
    while remaining:
        n = min(remaining, _CHUNK)
        writer.write(_SPACES[:n])
        remaining -= n
        await writer.drain()
    writer.write(suffix)


async def _gzip_bomb(writer: asyncio.StreamWriter, target: str, body: bytes) -> None:
    payload = gzip_bomb_payload()  # cached; the first call blocks the loop ~0.3 s
    writer.write(
        _head(
            "200 OK",
            "Content-Type: application/json",
            "Content-Encoding: gzip",
            f"Content-Length: {len(payload)}",
            "Connection: close",
        )
    )
    for start in range(0, len(payload), _CHUNK):
        writer.write(payload[start : start + _CHUNK])
        await writer.drain()


async def _endless_chunked(writer: asyncio.StreamWriter, target: str, body: bytes) -> None:
    writer.write(_head("200 OK", "Content-Type: application/json", "Transfer-Encoding: chunked"))
    chunk = f"{len(_SPACES):x}\r\n".encode() + _SPACES + b"\r\n"
    while True:  # ends with ConnectionError once the client has closed
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0)  # drain() need not yield; let other connections run


_BEHAVIOURS = {
    "ok": _ok,
    "redirect": _redirect,
    "headers_cut": _headers_cut,
    "body_cut": _body_cut,
    "huge_body": _huge_body,
    "gzip_bomb": _gzip_bomb,
    "endless_chunked": _endless_chunked,
}
