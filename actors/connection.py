"""The adapter's link to one endpoint: the SDK client, and a lean JSON path beside it.

Plain JSON requests are most of a batch, and through the SDK each costs about 1.2 ms of
CPU against 0.35 ms for the same POST through aiohttp (bench/README.md). So they go
straight through aiohttp, with the SDK client's own URL and headers, and a failure is
raised as the SDK's own exception, so the retry policy classifies both paths alike.
Streamed requests use the SDK client. Cancelling a request closes its connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import httpx2
import openai

DEFAULT_BASE_URL = "https://api.openai.com/v1"  # the SDK's default endpoint
DEFAULT_TIMEOUT_S = 600.0  # the SDK's default per request
CONNECT_TIMEOUT_S = 5.0

_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


class Connection:
    """One endpoint, one key: ``client`` for SDK calls, ``post_json`` for the common case."""

    def __init__(self, client: openai.AsyncOpenAI, *, max_connections: int) -> None:
        self.client = client
        self._base_url = str(client.base_url).rstrip("/")
        headers = {**client.default_headers, **client.auth_headers}
        self._headers = {name: value for name, value in headers.items() if isinstance(value, str)}
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._default_timeout = _timeout(DEFAULT_TIMEOUT_S)

    def __repr__(self) -> str:
        return f"Connection({self._base_url!r})"

    async def post_json(self, path: str, body: dict[str, Any], timeout_s: float | None) -> tuple[Any, Mapping[str, str]]:
        """POST ``body``; the decoded JSON answer and its headers, or the SDK's exception."""
        url = self._base_url + path
        timeout = self._default_timeout if timeout_s is None else _timeout(timeout_s)
        data = json.dumps(body).encode()
        try:
            async with self._open().post(url, data=data, headers=self._headers, timeout=timeout) as response:
                content = await response.read()
                status, headers = response.status, response.headers
        except asyncio.TimeoutError as err:
            raise openai.APITimeoutError(request=httpx2.Request("POST", url)) from err
        except aiohttp.ClientError as err:
            raise openai.APIConnectionError(message=f"{type(err).__name__}: {err}", request=httpx2.Request("POST", url)) from err
        if status >= 400:
            raise _status_error(url, status, headers, content)
        return json.loads(content), headers

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        await self.client.close()

    def _open(self) -> aiohttp.ClientSession:
        """The session is made on first use, inside the event loop that will use it."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=self._max_connections)
            self._session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
        return self._session


def _timeout(total_s: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total_s, sock_connect=CONNECT_TIMEOUT_S)


def _status_error(url: str, status: int, headers: Mapping[str, str], content: bytes) -> openai.APIStatusError:
    """The exception the SDK itself would raise for this answer."""
    response = httpx2.Response(status, headers=dict(headers), content=content, request=httpx2.Request("POST", url))
    try:
        body: Any = json.loads(content)
    except ValueError:
        body = content.decode("utf-8", "replace")
    data = body.get("error", body) if isinstance(body, dict) else body
    error_class = _STATUS_ERRORS.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return error_class(f"Error code: {status} - {body}", response=response, body=data)
