"""The adapter's link to one endpoint: the SDK client, and a lean JSON path beside it.

Plain JSON requests are most of a batch, and through the SDK each costs about 1.2 ms of
CPU; through ``HttpPool`` (httptools on asyncio protocols) about 0.1 ms (bench/README.md).
So they go through the pool, with the SDK client's own URL and headers, and a failure is
raised as the SDK's own exception, so the retry policy classifies both paths alike.
Streamed requests use the SDK client. Cancelling a request closes its connection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx2
import openai

from actors.http_pool import HttpPool

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
        base_url = str(client.base_url).rstrip("/")
        headers = {**client.default_headers, **client.auth_headers}
        plain_headers = {name: value for name, value in headers.items() if isinstance(value, str)}
        self._pool = HttpPool(base_url, plain_headers, max_connections=max_connections, connect_timeout_s=CONNECT_TIMEOUT_S)
        self._base_url = base_url

    def __repr__(self) -> str:
        return f"Connection({self._base_url!r})"

    async def post_json(self, path: str, body: dict[str, Any], timeout_s: float | None) -> tuple[Any, Mapping[str, str]]:
        """POST ``body``; the decoded JSON answer and its headers (names lower-cased), or the SDK's exception."""
        try:
            response = await self._pool.post(path, json.dumps(body).encode(), DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s)
        except TimeoutError as err:  # before OSError: TimeoutError is one
            raise openai.APITimeoutError(request=httpx2.Request("POST", self._base_url + path)) from err
        except OSError as err:
            message = f"{type(err).__name__}: {err}"
            raise openai.APIConnectionError(message=message, request=httpx2.Request("POST", self._base_url + path)) from err
        if response.status >= 400:
            raise _status_error(self._base_url + path, response.status, response.headers, response.body)
        return json.loads(response.body), response.headers

    async def close(self) -> None:
        await self._pool.close()
        await self.client.close()


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
