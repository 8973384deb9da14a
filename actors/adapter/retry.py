"""The one retry layer: which failures are transient, and how long to wait.

The OpenAI client is built with ``max_retries=0`` so that attempts do not multiply and
every 429 reaches our accounting. SDK exceptions are translated into ``TaskError`` here
and nowhere else.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import ssl
from collections.abc import Callable, Mapping

import openai
from pydantic import BaseModel, ConfigDict, Field
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from actors.adapter.transport import ResponseTooLarge, permanent_cause
from actors.errors import TaskError

log = logging.getLogger(__name__)

_URL_PASSWORD = re.compile(r"(\w+://[^/@\s:]*:)[^/@\s]*@")
_RETRYABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
_STATUS_CODES = {
    400: "bad_request",
    401: "authentication_error",
    403: "permission_denied",
    404: "not_found",
    408: "request_timeout",
    409: "conflict",
    422: "unprocessable_entity",
    429: "rate_limited",
}


class RetryPolicy(BaseModel):
    """Attempts and backoff: exponential with full jitter, never shorter than Retry-After."""

    model_config = ConfigDict(frozen=True)

    max_attempts: int = Field(default=5, ge=1)
    min_wait_s: float = Field(default=1.0, ge=0)
    max_wait_s: float = Field(default=32.0, ge=0)

    def retrying(self, label: str, *, may_retry: Callable[[], bool] = lambda: True) -> AsyncRetrying:
        """A fresh retry loop for one request; ``may_retry`` vetoes (a stream already sent text)."""
        backoff = wait_random_exponential(multiplier=max(self.min_wait_s, 1e-3), min=self.min_wait_s, max=self.max_wait_s)
        return AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=WaitRetryAfter(backoff),
            retry=retry_if_exception(lambda error: is_retryable(error) and may_retry()),
            before_sleep=functools.partial(_log_retry, label),
            reraise=True,
        )


class WaitRetryAfter(wait_base):
    """The fallback backoff, raised to the server's retry-after when it sent one."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        backoff = self.fallback(retry_state)
        error = retry_state.outcome.exception() if retry_state.outcome else None
        server_says = retry_after_s(error) if error is not None else None
        return max(backoff, server_says or 0.0)


def retry_after_s(error: BaseException) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` preferred), if it said."""
    headers = error.response.headers if isinstance(error, openai.APIStatusError) else None
    return parse_retry_after(headers)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(float(value) * scale, 0.0)
        except ValueError:
            continue
    return None


def is_fatal_quota(error: BaseException) -> bool:
    """A 429 that no wait will fix: the account is out of credit."""
    return isinstance(error, openai.RateLimitError) and _error_code(error) == "insufficient_quota"


def is_too_large_for_the_limit(error: BaseException) -> bool:
    """A 429 for a request larger than the per-minute limit itself: no wait will fit it."""
    return isinstance(error, openai.RateLimitError) and (_error_field(error, "message") or "").startswith("Request too large")


def waits_out(error: BaseException) -> bool:
    """A 429 that a wait fixes: the server's rate limit, not the account's credit or a request
    bigger than the limit."""
    return isinstance(error, openai.RateLimitError) and not is_fatal_quota(error) and not is_too_large_for_the_limit(error)


def is_retryable(error: BaseException) -> bool:
    if (
        is_fatal_quota(error)
        or is_too_large_for_the_limit(error)
        or isinstance(error, ResponseTooLarge)
        or permanent_cause(error) is not None
    ):
        return False
    if isinstance(error, openai.APIStatusError):
        return error.status_code in _RETRYABLE_STATUS
    return isinstance(error, (openai.APIConnectionError, openai.APIResponseValidationError, json.JSONDecodeError))


def describe_error(error: BaseException) -> TaskError:
    """Translate an SDK or transport exception into the stable TaskError of a result,
    with any password in a URL (a proxy's, say, which aiohttp quotes) masked."""
    described = _describe(error)
    return described.model_copy(update={"message": _URL_PASSWORD.sub(r"\1***@", described.message)})


def _describe(error: BaseException) -> TaskError:
    if is_fatal_quota(error):
        return TaskError(code="insufficient_quota", message=_message(error), status_code=429)
    if (cause := permanent_cause(error)) is not None:
        code = "tls_error" if isinstance(cause, (ssl.SSLError, ssl.CertificateError)) else "connection_error"
        return TaskError(code=code, message=f"{type(cause).__name__}: {cause} (not retried: no wait can fix it)")
    if isinstance(error, ResponseTooLarge):
        return TaskError(code="response_too_large", message=_message(error))
    if is_too_large_for_the_limit(error):
        return TaskError(code="request_too_large", message=_message(error), status_code=429)
    if isinstance(error, openai.APIStatusError) and 300 <= error.status_code < 400:
        target = error.response.headers.get("location", "?")
        message = f"the server redirected to {target}; rayfan follows no redirects: point the base URL at the final one"
        return TaskError(code="redirect", message=message, status_code=error.status_code)
    if isinstance(error, openai.APIStatusError):
        code = _STATUS_CODES.get(error.status_code, "server_error" if error.status_code >= 500 else f"http_{error.status_code}")
        return TaskError(code=code, message=_message(error), status_code=error.status_code)
    if isinstance(error, openai.APITimeoutError):
        return TaskError(code="timeout", message="the request timed out")
    if isinstance(error, openai.APIConnectionError):
        return TaskError(code="connection_error", message=_message(error))
    if isinstance(error, (openai.APIResponseValidationError, json.JSONDecodeError)):
        return TaskError(code="invalid_response", message=f"the server's response could not be read: {error}")
    raise TypeError(f"not a request error: {type(error).__name__}") from error


def _error_code(error: openai.APIStatusError) -> str | None:
    return _error_field(error, "code") or getattr(error, "code", None)


def _error_field(error: openai.APIStatusError, name: str) -> str | None:
    """A string field of the error object in the body (``{"error": {...}}`` or bare)."""
    body = error.body if isinstance(error.body, dict) else {}
    nested = body.get("error", body)
    value = nested.get(name) if isinstance(nested, dict) else None
    return value if isinstance(value, str) else None


def _message(error: BaseException) -> str:
    return getattr(error, "message", None) or str(error) or type(error).__name__


def _log_retry(label: str, state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    reason = describe_error(error) if error is not None else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "%s: attempt %d failed (%s%s); retrying in %.2fs",
        label,
        state.attempt_number,
        reason.code if reason else "unknown",
        f" {reason.status_code}" if reason and reason.status_code else "",
        wait,
    )
