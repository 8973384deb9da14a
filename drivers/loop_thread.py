"""An asyncio loop in a daemon thread, for servers that sync code (the CLI's ``--mock``, pytest
fixtures) starts and stops: ``start()`` binds before it returns (so ``port`` is known), ``stop()``
closes what the server opened before the loop is closed, so no transport is left for the
garbage collector to warn about.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")
S = TypeVar("S", bound="LoopThread")

__all__ = ["AppThread", "LoopThread"]


class LoopThread:
    """Subclasses implement ``_open`` (bind, set ``self.port``) and ``_close`` on the thread's loop."""

    _name = "rayfan-loop-thread"
    _new_loop: Callable[[], asyncio.AbstractEventLoop] = staticmethod(asyncio.new_event_loop)

    def __init__(self) -> None:
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self: S) -> S:
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        self._loop = self._new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self._name, daemon=True)
        self._thread.start()
        try:
            self.call(self._open)
        except BaseException:
            self._stop_loop()
            raise
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            self.call(self._close)
        finally:
            self._stop_loop()

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``fn()`` on the server's loop and wait for its result (from any other thread)."""
        if self._loop is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result()

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def _stop_loop(self) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._loop = self._thread = None


class AppThread(LoopThread):
    """An aiohttp app served from a ``LoopThread``: subclasses build it in ``_app``."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.port = port
        self._host = host
        self._ssl_context = ssl_context
        self._runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        raise NotImplementedError

    async def _open(self, *, backlog: int = 128, handler_cancellation: bool = False) -> None:
        """Bind and listen on the current loop (the thread's, or a caller's own); ``shutdown_timeout``
        is short so that ``stop`` cancels handlers still waiting (a scripted hang) at once."""
        runner = web.AppRunner(self._app(), handler_cancellation=handler_cancellation, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self.port, backlog=backlog, ssl_context=self._ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def _close(self) -> None:
        """Stop serving, then cut what is still open: a TLS connection's close waits for the
        client's answer, and a loop closed with it pending hung (uvloop) or warned."""
        if self._runner is None:
            return
        server = self._runner.server
        transports = [] if server is None else [conn.transport for conn in server.connections if conn.transport is not None]
        await self._runner.cleanup()
        self._runner = None
        for transport in transports:
            transport.abort()
