"""A line of a batch's output or error file, read as what it says of its request: a result
(the answer read as the synchronous path reads it, priced at the batch price), or the reason
it is unfinished and goes again.

Unfinished: the batch ended before answering it (``batch_expired``, ``batch_cancelled``), or
the answer is one the synchronous path would retry (429, 5xx). An answer no retry can
change (a 400) is a failed result, as it would be without the Batch API.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from actors.accounting.pricing import PriceTable
from actors.adapter.endpoints import READERS
from actors.adapter.retry import describe_error, is_retryable
from actors.adapter.transport import status_error
from actors.errors import TaskError
from actors.models import TaskResult, TaskStatus
from drivers.inputs import KIND_BY_URL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchContext:
    """What every answer of one batch shares."""

    batch_id: str
    url: str
    model: str
    prices: PriceTable
    """Batch prices (``PriceTable.for_batch``)."""
    attempts: int
    latency_s: float
    """From the batch's creation to its end: when its answers could be had."""


@dataclass(frozen=True)
class Answer:
    custom_id: str
    record_id: str | None
    """The id the Batch API gave the answer, kept as the record's."""
    result: TaskResult | None
    unfinished: TaskError | None
    """Why it goes again, when ``result`` is None."""


def read_answer(raw: bytes, batch: BatchContext) -> Answer | None:
    """The answer on one line, or None for a line that is not one (logged)."""
    try:
        line = json.loads(raw)
        custom_id, response, error = line["custom_id"], line.get("response"), line.get("error")
        if not isinstance(custom_id, str) or not (isinstance(response, dict) or isinstance(error, dict)):
            raise ValueError("neither a response nor an error")
        record_id = line.get("id") if isinstance(line.get("id"), str) else None
        if isinstance(error, dict):
            reason = TaskError(code=str(error.get("code") or "batch_error"), message=str(error.get("message") or ""))
            return Answer(custom_id, record_id, None, reason)
        assert isinstance(response, dict)
        return _read_response(custom_id, record_id, response, batch)
    except (ValueError, KeyError, TypeError) as err:
        log.warning("batch %s: a line of its output is not an answer (%s); its request goes again", batch.batch_id, err)
        return None


def _read_response(custom_id: str, record_id: str | None, response: dict[str, Any], batch: BatchContext) -> Answer:
    status, body, request_id = int(response["status_code"]), response.get("body"), response.get("request_id")
    common: dict[str, Any] = {"custom_id": custom_id, "attempts": batch.attempts, "latency_s": batch.latency_s, "request_id": request_id}
    if status == 200 and isinstance(body, dict):
        reply = READERS[KIND_BY_URL[batch.url]](body, {}, batch.model)
        usage = reply.usage
        result = TaskResult(
            status=TaskStatus.COMPLETED,
            text=reply.text,
            body=body,
            finish_reason=reply.finish_reason,
            usage=usage,
            cost_usd=batch.prices.cost(reply.model, usage),
            model=reply.model,
            **common,
        )
        return Answer(custom_id, record_id, result, None)
    error = status_error(batch.url, status, {}, json.dumps(body).encode())
    reason = describe_error(error)
    if is_retryable(error):
        return Answer(custom_id, record_id, None, reason)
    return Answer(custom_id, record_id, TaskResult(status=TaskStatus.FAILED, cost_usd=0.0, model=batch.model, error=reason, **common), None)


async def lines_of(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The complete lines of a stream of chunks; a last line without its newline counts too."""
    rest = b""
    async for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line.strip():
                yield line
    if rest.strip():
        yield rest
