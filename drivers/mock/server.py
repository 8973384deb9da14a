"""A small, deterministic fake of the OpenAI HTTP API (aiohttp) for tests, demos and benchmarks.

This module serves it: the config, the request log, the app on its own loop thread, and the
foreground CLI. The package docstring (``drivers.mock``) describes what the mock does.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic
from aiohttp import web

from actors.adapter.process_gc import tune_for_many_open_requests
from drivers.loop_thread import AppThread
from drivers.mock.batches import MAX_UPLOAD_BYTES, MockBatchConfig, MockBatches
from drivers.mock.parsing import (
    NO_DIRECTIVE,
    BadRequest,
    Body,
    Directive,
    Parse,
    body_key,
    load_json,
    parse_chat,
    parse_directives,
    parse_embeddings,
    parse_responses,
)
from drivers.mock.rate_limits import RateLimiter, rate_limited
from drivers.mock.replies import (
    MODELS_BODY,
    Render,
    error,
    invalid_json,
    park,
    render_chat,
    render_embeddings,
    render_response,
    scripted_error,
)

try:
    from uvloop import new_event_loop
except ImportError:  # uvloop is not built for Windows
    from asyncio import new_event_loop  # type: ignore[assignment]

__all__ = ["MockConfig", "MockServer", "ReceivedRequest", "main"]

LOG_LIMIT = 10_000
"""The log keeps only the most recent requests, so long benchmarks don't grow memory."""

_ACCEPT_BACKLOG = 4096


class MockConfig(pydantic.BaseModel):
    """Server-wide behaviour. Frozen: ``MockServer.configure`` swaps in a new validated copy."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    latency_s: float = pydantic.Field(0.0, ge=0)
    """Added before every response, per request."""
    rpm_limit: int | None = pydantic.Field(None, gt=0)
    """Requests per minute, enforced per API key (Authorization header)."""
    tpm_limit: int | None = pydantic.Field(None, gt=0)
    """Tokens per minute per key; a request costs prompt tokens + its max output tokens."""
    rate_window_s: float = pydantic.Field(60.0, gt=0, le=60)
    """The window the per-minute limits are enforced over: a bucket holds this much of the
    limit and refills at the limit (60: a minute's burst at once; 1: metered per second)."""
    ratelimit_headers: bool = True
    """Send OpenAI's ``x-ratelimit-*`` headers when a limit is set."""
    headers_show_minute: bool = False
    """Headers describe a full minute's bucket even when ``rate_window_s`` is shorter, as a
    server that hides its per-second metering does: only its 429s tell."""
    revoked_keys: frozenset[str] = frozenset()
    """API keys answered 401 ``invalid_api_key``, as a revoked key is (checked after the latency)."""
    batch: MockBatchConfig = MockBatchConfig()
    """The Batch API's timing, holds and limits (``drivers.mock.batches``)."""


class ReceivedRequest(pydantic.BaseModel):
    """One log entry, recorded on arrival so tests can see requests that never get answered."""

    path: str
    body: dict[str, Any] | None
    authorization: str | None
    received_at: float
    """``time.monotonic()`` on arrival."""
    outcome: str
    """"pending" until answered, then "ok", "error:<status>", "dropped", "invalid_json",
    or "disconnected" (the client closed the connection before the response)."""


@dataclass(slots=True)
class _Entry:
    """The live log record: a cheap slotted object per request, turned into ReceivedRequest on read."""

    path: str
    body: Body | None
    authorization: str | None
    received_at: float
    outcome: str = "pending"

    def snapshot(self) -> ReceivedRequest:
        return ReceivedRequest.model_construct(
            path=self.path,
            body=self.body,
            authorization=self.authorization,
            received_at=self.received_at,
            outcome=self.outcome,
        )


# --- the server -----------------------------------------------------------------------------


class MockServer(AppThread):
    """Runs the app on its own event loop in a daemon thread so sync code (pytest fixtures, the CLI) can use it."""

    _name = "rayfan-mock-server"
    _new_loop = staticmethod(new_event_loop)

    def __init__(
        self,
        config: MockConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        public_host: str | None = None,
    ) -> None:
        """``ssl_context`` serves HTTPS; ``public_host`` names the host in ``base_url`` (e.g. one
        only a test proxy resolves) while the server still binds ``host``."""
        super().__init__(host=host, port=port, ssl_context=ssl_context)
        self.config = config or MockConfig()
        self._public_host = public_host
        self._lock = threading.Lock()  # guards the log, fault counters and rate buckets
        self._log: deque[_Entry] = deque(maxlen=LOG_LIMIT)
        self._seen: dict[str, int] = {}
        self._limiter = RateLimiter()
        self._ids = itertools.count(1)
        self._answering = 0
        self._peak_answering = 0
        self.batches = MockBatches(lambda: self.config.batch, self._fault_applies, lambda: next(self._ids), lambda request: self._refused_key(request, {}))
        """Files and batches; ``batches.submissions()`` lists every batch created."""

    # -- lifecycle (start/stop/with from LoopThread)

    @property
    def base_url(self) -> str:
        if self._runner is None:
            raise RuntimeError("MockServer is not started")
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._public_host or self._host}:{self.port}/v1"

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_UPLOAD_BYTES)  # aiohttp's default, 1 MiB, is a small batch file
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        self.batches.add_routes(app)
        return app

    async def _open(self, *, backlog: int = _ACCEPT_BACKLOG, handler_cancellation: bool = True) -> None:
        """A deep accept queue, as real endpoints have: at aiohttp's default of 128, a batch
        opening thousands of connections at once loses SYNs and waits a second to resend
        them. Handler cancellation: a client disconnect cancels its handler, so waits end
        and are logged."""
        await super()._open(backlog=backlog, handler_cancellation=handler_cancellation)

    # -- test-facing state

    def configure(self, **changes: Any) -> None:
        """Validate and swap in a new config; in-flight requests keep the one they started with."""
        with self._lock:
            self.config = MockConfig.model_validate({**self.config.model_dump(), **changes})
        self._on_loop(self.batches.changed)

    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return [entry.snapshot() for entry in self._log]

    @property
    def peak_in_flight(self) -> int:
        """The most requests (chat, responses, embeddings) being answered at once since the last reset."""
        with self._lock:
            return self._peak_answering

    def reset(self) -> None:
        with self._lock:
            self._peak_answering = self._answering
            self._log.clear()
            self._seen.clear()
            self._limiter.clear()
        self._on_loop(self.batches.clear)

    def _on_loop(self, step: Callable[[], None]) -> None:
        """Run ``step`` on the server's loop and wait for it (served in the foreground, there is
        no other loop: it runs here)."""
        if self._loop is None:
            step()
            return

        async def run() -> None:
            step()

        self.call(run)

    # -- handlers

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, parse_chat, render_chat)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, parse_responses, render_response)

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, parse_embeddings, render_embeddings)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        self._finish(self._record(request, None), "ok")
        return web.Response(body=MODELS_BODY, content_type="application/json")

    async def _serve(self, request: web.Request, parse: Parse, render: Render) -> web.StreamResponse:
        """Log on arrival, answer, then log the outcome; a cancellation means the client left."""
        raw = await request.read()
        entry = self._record(request, load_json(raw))
        self._count_answering(+1)
        try:
            response = await self._answer(request, raw, entry, parse, render)
        except asyncio.CancelledError:
            self._finish(entry, "disconnected")
            raise
        finally:
            self._count_answering(-1)
        self._finish(entry, "ok" if response.status == 200 else f"error:{response.status}")
        return response

    async def _answer(
        self, request: web.Request, raw: bytes, entry: _Entry, parse: Parse, render: Render
    ) -> web.StreamResponse:
        body = entry.body
        n = next(self._ids)
        headers = {"x-request-id": f"req_mock{n}"}
        if body is None:
            return error(400, "The request body is not a JSON object.", headers, type_="invalid_request_error")
        try:
            job = parse(body)
            directive = parse_directives(raw) if b"[[mock" in raw else NO_DIRECTIVE
        except BadRequest as exc:
            return error(400, exc.message, headers, type_="invalid_request_error", param=exc.param)
        config = self.config
        latency = config.latency_s if directive.latency is None else directive.latency
        if latency:
            await asyncio.sleep(latency)
        if (refused := self._refused_key(request, headers)) is not None:
            return refused
        if config.rpm_limit or config.tpm_limit:
            key = request.headers.get("Authorization", "")
            with self._lock:
                admission = self._limiter.admit(key, job.cost, config)
            headers.update(admission.headers)
            if admission.wait_s:
                return rate_limited(admission, job.cost, headers)
        if directive.has_fault and self._fault_applies(request.path, body, directive):
            return await self._fault(request, body, directive, headers, entry)
        return await render(request, body, job, n, headers)

    def _refused_key(self, request: web.Request, headers: dict[str, str]) -> web.Response | None:
        if self.config.revoked_keys and request.headers.get("Authorization", "").removeprefix("Bearer ") in self.config.revoked_keys:
            return error(401, "Incorrect API key provided (revoked).", headers, type_="invalid_request_error", code="invalid_api_key")
        return None

    def _fault_applies(self, path: str, body: Body, directive: Directive) -> bool:
        if directive.times is None:
            return True
        key = body_key(path, body)
        with self._lock:
            seen = self._seen.get(key, 0)
            self._seen[key] = seen + 1
        return seen < directive.times

    async def _fault(
        self, request: web.Request, body: Body, directive: Directive, headers: dict[str, str], entry: _Entry
    ) -> web.StreamResponse:
        if directive.drop:
            self._finish(entry, "dropped")
            if request.transport is not None:
                request.transport.close()
            await park()
        if directive.hang:
            await park()
        if directive.invalid_json:
            self._finish(entry, "invalid_json")
            return invalid_json(bool(body.get("stream")), headers)
        return scripted_error(directive, headers)

    # -- log

    def _record(self, request: web.Request, body: Body | None) -> _Entry:
        entry = _Entry(request.path, body, request.headers.get("Authorization"), time.monotonic())
        with self._lock:
            self._log.append(entry)
        return entry

    def _count_answering(self, change: int) -> None:
        with self._lock:
            self._answering += change
            self._peak_answering = max(self._peak_answering, self._answering)

    def _finish(self, entry: _Entry, outcome: str) -> None:
        """Set the outcome once: the first final outcome (e.g. "dropped") wins."""
        with self._lock:
            if entry.outcome == "pending":
                entry.outcome = outcome


# --- foreground CLI -------------------------------------------------------------------------


async def _serve_until_signalled(server: MockServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server._open()
    print(server.base_url, flush=True)
    try:
        await stop.wait()
    finally:
        await server._close()


def main(argv: list[str] | None = None) -> None:
    """Serve in the foreground, e.g. for benchmarks that need the server in another process."""
    parser = argparse.ArgumentParser(prog="python -m drivers.mock", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added before every response")
    parser.add_argument("--rpm", type=int, default=None, help="requests-per-minute limit per API key")
    parser.add_argument("--tpm", type=int, default=None, help="tokens-per-minute limit per API key")
    parser.add_argument("--rate-window", type=float, default=60.0, metavar="S", help="enforce the limits over S seconds (default 60; 1 = per second)")
    parser.add_argument("--certfile", default=None, help="PEM certificate chain: serve HTTPS (needs --keyfile)")
    parser.add_argument("--keyfile", default=None, help="PEM private key of --certfile")
    args = parser.parse_args(argv)
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("--certfile and --keyfile go together")
    config = MockConfig(latency_s=args.latency, rpm_limit=args.rpm, tpm_limit=args.tpm, rate_window_s=args.rate_window)
    ssl_context = None
    if args.certfile is not None:
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_context.load_cert_chain(args.certfile, args.keyfile)
    tune_for_many_open_requests()  # its own process: thousands of open requests in benchmarks
    loop = new_event_loop()
    try:
        loop.run_until_complete(_serve_until_signalled(MockServer(config, port=args.port, ssl_context=ssl_context)))
    finally:
        loop.close()

