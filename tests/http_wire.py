"""Just enough HTTP/1.1 framing for the raw-socket test servers (forward proxy, hostile server).

They must see the bytes as sent and decide themselves what to write back, which an HTTP
framework would not let them do; so they read heads and bodies with these few functions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["Head", "copy_body", "read_body", "read_head"]

Emit = Callable[[bytes], Awaitable[None]]

_READ_SIZE = 64 * 1024


@dataclass
class Head:
    """A request or response head: the first line and the header fields in order, names as sent."""

    start_line: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        """The first value of a header, matched case-insensitively."""
        name = name.lower()
        return next((v for n, v in self.headers if n.lower() == name), None)

    def encode(self, start_line: str | None = None, drop: frozenset[str] = frozenset()) -> bytes:
        """The head on the wire, optionally with another first line and without the ``drop`` headers (lower case)."""
        lines = [start_line or self.start_line, *(f"{n}: {v}" for n, v in self.headers if n.lower() not in drop)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    @property
    def keep_alive(self) -> bool:
        """Whether the peer lets the connection carry another message (HTTP/1.1 default)."""
        connection = (self.get("Connection") or "").lower()
        if self.start_line.endswith("HTTP/1.0"):
            return "keep-alive" in connection
        return "close" not in connection


async def read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next head, or None if the peer closed cleanly before sending one. ValueError if malformed."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise
    start, *lines = raw[:-4].decode("latin-1").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"malformed header line {line!r}")
        headers.append((name, value.strip()))
    return Head(start, headers)


async def copy_body(reader: asyncio.StreamReader, head: Head, emit: Emit, *, decoded: bool = False) -> None:
    """Pass a message body to ``emit`` as it arrives: the wire bytes (chunk framing included), or
    with ``decoded`` only the payload. No Content-Length and no chunking means no body (requests)."""
    if "chunked" in (head.get("Transfer-Encoding") or "").lower():
        await _copy_chunked(reader, emit, decoded)
        return
    length = head.get("Content-Length")
    if length is None:
        return
    if not length.isdigit():
        raise ValueError(f"bad Content-Length {length!r}")
    await _copy_exactly(reader, int(length), emit)


async def read_body(reader: asyncio.StreamReader, head: Head) -> bytes:
    """The whole decoded payload of a (small) body."""
    parts: list[bytes] = []

    async def keep(data: bytes) -> None:
        parts.append(data)

    await copy_body(reader, head, keep, decoded=True)
    return b"".join(parts)


async def _copy_exactly(reader: asyncio.StreamReader, n: int, emit: Emit) -> None:
    while n:
        data = await reader.read(min(n, _READ_SIZE))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        await emit(data)


async def _copy_chunked(reader: asyncio.StreamReader, emit: Emit, decoded: bool) -> None:
    async def wire(data: bytes) -> None:
        if not decoded:
            await emit(data)

    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ValueError(f"bad chunk size line {line!r}") from None
        await wire(line)
        if size == 0:
            while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                await wire(trailer)
            await wire(trailer)
            return
        await _copy_exactly(reader, size, emit)
        if (end := await reader.readexactly(2)) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
        await wire(end)
