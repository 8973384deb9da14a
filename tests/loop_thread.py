"""Raw asyncio-streams test servers on ``drivers.loop_thread.LoopThread``: their connections
and handlers are closed on stop, so pytest's ``-W error`` finds no transport left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from drivers.loop_thread import LoopThread

__all__ = ["StreamServer", "close_writer"]


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a stream and wait for it, ignoring errors: the peer may already be gone."""
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


class StreamServer(LoopThread):
    """A raw asyncio-streams server on 127.0.0.1 whose connection handlers are cancelled on stop."""

    def __init__(self) -> None:
        super().__init__()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._lock = threading.RLock()  # re-entrant: wait_until predicates may use the public properties
        self._changed = threading.Condition(self._lock)
        self._connections = 0
        self._open_connections = 0

    @property
    def connections(self) -> int:
        """Client connections accepted so far."""
        with self._lock:
            return self._connections

    @property
    def open_connections(self) -> int:
        """Client connections whose handler has not finished yet."""
        with self._lock:
            return self._open_connections

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate()`` (called under the lock) holds; it is re-checked on every change."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise TimeoutError(f"{type(self).__name__}: condition not reached in {timeout}s")

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until every client connection is closed and its handler done."""
        self.wait_until(lambda: self._open_connections == 0, timeout)

    def _notify(self) -> None:
        """Call with the lock held after changing recorded state."""
        self._changed.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        with self._lock:
            self._connections += 1
            self._open_connections += 1
            self._notify()
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the peer went away or sent garbage (ValueError: malformed framing): just close
        finally:
            await close_writer(writer)
            self._handlers.discard(task)
            with self._lock:
                self._open_connections -= 1
                self._notify()
