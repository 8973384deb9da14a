"""The adapter's link to one endpoint: one aiohttp session, used by every request.

One transport, one set of rules. The session is built from the driver's
``EndpointSettings``: TLS trust (the SDK's store, or the CA the driver read), the proxy
the driver resolved, no redirects followed, a connect and a total timeout, a cap on open
connections and on the size of an answer after decompression. Streamed requests go through
the SDK client, whose HTTP client is the SDK's own aiohttp transport on this same session;
plain JSON requests (most of a batch) use the session directly, since the SDK's request
path costs several times the CPU per request (bench/README.md). They are sent to the URL
with the headers the SDK itself builds for the same settings, path and model (cached per
route), and a failure is raised as the SDK's own exception, so retries classify both
paths alike. Cancelling a request closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
import httpx2
import openai
from openai._models import FinalRequestOptions
from openai._vendor.httpx_aiohttp.client import Httpx2AiohttpClient
from openai._vendor.httpx_aiohttp.transport import AiohttpTransport

from actors.adapter.settings import EndpointSettings

_ROUTES_KEPT = 1024  # (path, model, timeout) routes cached; a batch uses a handful
_HOP_BY_HOP = frozenset({"host", "connection", "content-length", "transfer-encoding"})  # aiohttp sets these itself
_SDK_ENVIRONMENT = ("OPENAI_", "AZURE_OPENAI_")
_STATUS_ERRORS: dict[int, type[openai.APIStatusError]] = {
    400: openai.BadRequestError,
    401: openai.AuthenticationError,
    403: openai.PermissionDeniedError,
    404: openai.NotFoundError,
    409: openai.ConflictError,
    422: openai.UnprocessableEntityError,
    429: openai.RateLimitError,
}


class ResponseTooLarge(openai.APIError):
    """An answer larger than ``EndpointSettings.max_response_bytes`` once decompressed."""


class Connection:
    """One endpoint, one key: ``client`` (the SDK) for streams, ``post_json`` for the common case."""

    def __init__(self, settings: EndpointSettings, *, max_connections: int) -> None:
        self._settings = settings
        self._max_connections = max_connections
        self._tls = _tls_context(settings)
        self._session: aiohttp.ClientSession | None = None
        self._routes: dict[tuple[str, str, float | None], tuple[str, dict[str, str]]] = {}
        transport = AiohttpTransport(client=self._get_session, verify=self._tls, trust_env=False)
        http_client = Httpx2AiohttpClient(transport=transport, follow_redirects=False, trust_env=False)
        self.client = _sdk_client(settings, http_client)

    def __repr__(self) -> str:
        return f"Connection({self._settings.display_url!r})"

    async def post_json(self, path: str, body: dict[str, Any], timeout_s: float | None) -> tuple[Any, Mapping[str, str]]:
        """POST ``body``; the decoded JSON answer and its headers (case-insensitive), or the SDK's exception."""
        url, headers = self._route(path, str(body.get("model", "")), timeout_s)
        timeout = aiohttp.ClientTimeout(total=timeout_s or self._settings.timeout_s, sock_connect=self._settings.connect_timeout_s)
        try:
            async with self._get_session().post(
                url, data=json.dumps(body).encode(), headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                content = await _read_capped(response, self._settings.max_response_bytes, url)
                status, response_headers = response.status, response.headers
        except asyncio.TimeoutError as err:  # aiohttp's timeouts are asyncio's
            raise openai.APITimeoutError(request=httpx2.Request("POST", url)) from err
        except (aiohttp.ClientError, OSError) as err:
            raise openai.APIConnectionError(message=f"{type(err).__name__}: {err}", request=httpx2.Request("POST", url)) from err
        if status >= 300:
            raise status_error(url, status, response_headers, content)
        return json.loads(content), response_headers

    async def close(self) -> None:
        await self.client.close()
        if self._session is not None:
            await self._session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        """The session, made on first use: aiohttp wants a running loop, which __init__ lacks."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=self._tls, ttl_dns_cache=10)
            proxy = self._settings.proxy_url.get_secret_value() if self._settings.proxy_url else None
            self._session = aiohttp.ClientSession(
                connector=connector, proxy=proxy, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(), raise_for_status=False
            )
        return self._session

    def _route(self, path: str, model: str, timeout_s: float | None) -> tuple[str, dict[str, str]]:
        """The URL and headers the SDK builds for this path and model (Azure routes by model)."""
        key = (path, model, timeout_s)
        route = self._routes.get(key)
        if route is None:
            options = FinalRequestOptions.construct(method="post", url=path, json_data={"model": model})
            if timeout_s is not None:
                options.timeout = timeout_s
            request = self.client._build_request(options)
            headers = {name: value for name, value in request.headers.items() if name.lower() not in _HOP_BY_HOP}
            route = (str(request.url), headers)
            if len(self._routes) >= _ROUTES_KEPT:
                self._routes.clear()
            self._routes[key] = route
        return route


def permanent_cause(error: BaseException) -> BaseException | None:
    """The cause that no retry can fix (an untrusted certificate, a TLS mismatch, a host
    that does not exist, a proxy that refuses us), if ``error`` has one, however the SDK or
    aiohttp wrapped it."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (ssl.SSLError, ssl.CertificateError)):
            return cause
        if isinstance(cause, aiohttp.ClientHttpProxyError) and cause.status in (401, 403, 407):
            return cause
        if isinstance(cause, socket.gaierror) and cause.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


async def _read_capped(response: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    """The body, decompressed, but never more than ``limit`` bytes of it in memory."""
    if response.content_length is not None and response.content_length > limit:
        raise _too_large(url, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _too_large(url, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(url: str, limit: int) -> ResponseTooLarge:
    return ResponseTooLarge(f"the answer is larger than {limit} bytes; not read", httpx2.Request("POST", url), body=None)


def status_error(url: str, status: int, headers: Mapping[str, str], content: bytes) -> openai.APIStatusError:
    """The exception the SDK itself would raise for this answer."""
    response = httpx2.Response(status, headers=list(headers.items()), content=content, request=httpx2.Request("POST", url))
    try:
        body: Any = json.loads(content)
    except ValueError:
        body = content.decode("utf-8", "replace")
    data = body.get("error", body) if isinstance(body, dict) else body
    error_class = _STATUS_ERRORS.get(status, openai.InternalServerError if status >= 500 else openai.APIStatusError)
    return error_class(f"Error code: {status} - {body}", response=response, body=data)


def _tls_context(settings: EndpointSettings) -> ssl.SSLContext:
    """The CA the driver handed over, else the store the SDK itself uses (never this node's SSL_CERT_* variables)."""
    if settings.ca_pem is not None:
        return ssl.create_default_context(cadata=settings.ca_pem)
    return httpx2.create_ssl_context(verify=True, trust_env=False)


def _sdk_client(settings: EndpointSettings, http_client: httpx2.AsyncClient) -> openai.AsyncOpenAI:
    """The SDK client for exactly these settings, built where no OPENAI_*/AZURE_OPENAI_*
    variable of this node can add to them."""
    common: dict[str, Any] = {
        "api_key": settings.api_key.get_secret_value(),
        "organization": settings.organization,
        "project": settings.project,
        "default_headers": {name: value.get_secret_value() for name, value in settings.headers.items()} or None,
        "default_query": settings.query or None,
        "timeout": httpx2.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
        "max_retries": 0,  # tenacity is the one retry layer
        "http_client": http_client,
    }
    with _environment_hidden(_SDK_ENVIRONMENT):
        if settings.azure is not None:
            azure = settings.azure
            return openai.AsyncAzureOpenAI(
                azure_endpoint=azure.endpoint, azure_deployment=azure.deployment, api_version=azure.api_version, **common
            )
        return openai.AsyncOpenAI(base_url=settings.base_url, **common)


@contextlib.contextmanager
def _environment_hidden(prefixes: tuple[str, ...]) -> Iterator[None]:
    """Hide the variables the SDK would read while it is constructed; restored after."""
    hidden = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith(prefixes)}
    try:
        yield
    finally:
        os.environ.update(hidden)
