"""Answers no real endpoint should give, each ending as one error record, with memory bounded.

A raw-socket server scripts them: a redirect, headers or a body cut off, a 50 MB body, a
gzip bomb (1 MB on the wire, 1 GiB inflated) and an endless chunked body. Cut-off answers
are transient and retried; the others fail at once. The adapter runs as a Ray actor in a
process of its own, whose peak RSS the test reads before and after.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from actors import ChatTask, OpenAIAdapter, RetryPolicy, TaskResult
from actors.adapter.settings import EndpointSettings
from tests.hostile_server import HostileServer

ATTEMPTS = 2
RETRIES = RetryPolicy(max_attempts=ATTEMPTS, min_wait_s=0.0, max_wait_s=0.0)
CASES = {
    # behaviour: (error code, attempts)
    "redirect": ("redirect", 1),
    "headers_cut": ("connection_error", ATTEMPTS),
    "body_cut": ("connection_error", ATTEMPTS),
    "huge_body": ("response_too_large", 1),
    "gzip_bomb": ("response_too_large", 1),
    "endless_chunked": ("response_too_large", 1),
}
RSS_GROWTH_LIMIT_KIB = 256 * 1024  # the bomb alone, held, would be 1 GiB


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


PEAK_RSS_KIB = lambda _: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731  (a lambda travels by value)


def _task(name: str, stream: bool = False) -> ChatTask:
    return ChatTask(custom_id=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=stream)


def _adapter(base_url: str) -> Any:
    endpoint = EndpointSettings(base_url=base_url, api_key="sk-hostile")  # the default cap: 32 MiB, below the 50 MB body
    return OpenAIAdapter.remote(endpoint=endpoint, retry=RETRIES)


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("behaviour", sorted(CASES))
def test_each_hostile_answer_is_one_error_record_and_memory_stays_bounded(hostile: HostileServer, behaviour: str) -> None:
    adapter = _adapter(hostile.url_for(behaviour))  # type: ignore[arg-type]
    try:
        before = ray.get(adapter.__ray_call__.remote(PEAK_RSS_KIB))
        result: TaskResult = ray.get(adapter.run.remote(_task(behaviour)))
        peak = ray.get(adapter.__ray_call__.remote(PEAK_RSS_KIB))
        assert ray.get(adapter.status.remote()).in_flight == 0, "the adapter lives on, with nothing left open"
    finally:
        ray.kill(adapter)
    code, attempts = CASES[behaviour]
    assert result.error is not None and (result.error.code, result.attempts) == (code, attempts), result.error
    assert hostile.requests_for(behaviour) >= attempts
    assert peak - before < RSS_GROWTH_LIMIT_KIB, f"peak RSS grew {(peak - before) // 1024} MiB"


@pytest.mark.usefixtures("ray_session")
def test_a_redirect_is_not_followed_on_the_streamed_path_either(hostile: HostileServer) -> None:
    adapter = _adapter(hostile.url_for("redirect"))  # type: ignore[arg-type]
    try:
        result: TaskResult = ray.get(adapter.run.remote(_task("stream", stream=True)))
    finally:
        ray.kill(adapter)
    assert result.error is not None and (result.error.code, result.attempts) == ("redirect", 1), result.error
    assert "/ok/" in result.error.message, "the message names where the server pointed"


@pytest.mark.usefixtures("ray_session")
def test_the_same_server_answering_well_succeeds(hostile: HostileServer) -> None:
    adapter = _adapter(hostile.url_for("ok"))  # type: ignore[arg-type]
    try:
        result: TaskResult = ray.get(adapter.run.remote(_task("fine")))
    finally:
        ray.kill(adapter)
    assert result.ok and result.attempts == 1
