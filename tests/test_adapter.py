"""The adapter class over real HTTP to the fake server, without Ray."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from actors import Adapter, ChatTask, ConfigError, InvalidTask, ResultTimeout, RetryPolicy, TaskNotFound, TaskStatus, Usage
from actors.accounting.pricing import PriceTable
from actors.adapter.settings import EndpointSettings
from drivers.mock import MockServer
from tests.conftest import TEST_KEY, run

FAST_RETRIES = RetryPolicy(max_attempts=5, min_wait_s=0.01, max_wait_s=0.05)


def make_adapter(server: MockServer, **kwargs: object) -> Adapter:
    kwargs.setdefault("retry", FAST_RETRIES)
    return Adapter(endpoint=EndpointSettings(base_url=server.base_url, api_key=TEST_KEY), **kwargs)  # type: ignore[arg-type]


def chat(custom_id: str, prompt: str, **fields: object) -> ChatTask:
    return ChatTask(custom_id=custom_id, messages=[{"role": "user", "content": prompt}], **fields)  # type: ignore[arg-type]


def wait_for_outcome(server: MockServer, outcome: str, timeout_s: float = 30.0, *, count: int = 1) -> None:
    """Until ``count`` requests ended so at the server: it sees each closed connection on its own time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(entry.outcome == outcome for entry in server.requests()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"no request with outcome {outcome!r}: {[e.outcome for e in server.requests()]}")


def test_submit_status_result_and_cost(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        task_id = await adapter.submit_task(chat("a", "tell me about tides"))
        assert await adapter.get_status(task_id) in (TaskStatus.PENDING, TaskStatus.RUNNING)
        result = await adapter.get_result(task_id)
        await adapter.close()
        assert result.status is TaskStatus.COMPLETED and result.custom_id == "a"
        assert result.text and result.text.startswith("Mock reply: tell me about tides")
        assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0
        expected = PriceTable.default().models["gpt-4o-mini"].cost(result.usage)
        assert result.cost_usd == pytest.approx(expected)
        assert result.cost_usd == pytest.approx(
            (result.usage.prompt_tokens * 0.15 + result.usage.completion_tokens * 0.60) / 1e6
        )
        assert result.attempts == 1 and result.request_id
        with pytest.raises(TaskNotFound):
            await adapter.get_status(task_id)  # collected results are evicted

    run(body())


def test_constraints_and_passthrough_reach_the_server(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server, model="gpt-4o")
        task = chat("c", "one two three four five six seven eight nine ten", max_tokens=3, temperature=0.2, top_p=0.5, seed=7)
        result = await adapter.run(task)
        await adapter.close()
        sent = server.requests()[-1].body
        assert sent is not None
        assert sent["max_tokens"] == 3 and sent["temperature"] == 0.2
        assert sent["top_p"] == 0.5 and sent["seed"] == 7
        assert sent["model"] == "gpt-4o"  # the adapter's model fills a task that names none
        assert result.finish_reason == "length" and result.usage.completion_tokens == 3

    run(body())


def test_invalid_task_is_rejected_naming_the_field(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        with pytest.raises(InvalidTask, match="max_tokens"):
            await adapter.submit_task({"custom_id": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0})
        with pytest.raises(InvalidTask, match="messages"):
            await adapter.submit_task({"custom_id": "x"})
        await adapter.close()
        assert server.requests() == []

    run(body())


def test_stream_result_yields_deltas_then_usage_and_cost(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        plain = await adapter.run(chat("p", "stream this answer please"))
        task_id = await adapter.submit_task(chat("s", "stream this answer please", stream=True))
        items = [item async for item in adapter.stream_result(task_id)]
        await adapter.close()
        *deltas, final = items
        assert len(deltas) > 1 and all(isinstance(d, str) for d in deltas)
        assert "".join(deltas) == plain.text == final.text
        assert final.usage == plain.usage and final.usage.completion_tokens > 0
        assert final.cost_usd == pytest.approx(plain.cost_usd)
        sent = server.requests()[-1].body
        assert sent is not None and sent["stream"] is True and sent["stream_options"] == {"include_usage": True}

    run(body())


def test_stream_result_of_a_plain_task_yields_its_text_once(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        task_id = await adapter.submit_task(chat("p", "not streamed"))
        items = [item async for item in adapter.stream_result(task_id)]
        await adapter.close()
        assert len(items) == 2 and items[0] == items[1].text

    run(body())


async def requests_at(server: MockServer, count: int = 1) -> None:
    """Until the server has ``count`` requests: the adapter's first send waits for its tokenizer, which takes seconds on a loaded box."""
    deadline = time.monotonic() + 120
    while len(server.requests()) < count:
        assert time.monotonic() < deadline, f"fewer than {count} requests reached the server in 120 s"
        await asyncio.sleep(0.01)


def test_cancel_reaches_the_socket(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        task_id = await adapter.submit_task(chat("h", "wait forever [[mock hang]]"))
        await requests_at(server)
        assert (await adapter.status()).in_flight == 1
        assert await adapter.cancel_task(task_id) is True
        assert await adapter.get_status(task_id) is TaskStatus.CANCELLED
        assert (await adapter.status()).in_flight == 0, "finished, though not collected yet"
        result = await adapter.get_result(task_id)
        assert result.status is TaskStatus.CANCELLED and result.error and result.error.code == "cancelled"
        stats = await adapter.stats()
        await adapter.close()
        assert stats.cancelled == 1

    run(body())
    wait_for_outcome(server, "disconnected")


def test_tasks_beyond_max_in_flight_wait_their_turn(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server, max_in_flight=2)
        ids = [await adapter.submit_task(chat(f"q{i}", f"queued {i} [[mock latency=1]]")) for i in range(5)]
        await requests_at(server, count=2)
        statuses = [await adapter.get_status(task_id) for task_id in ids]
        info = await adapter.status()
        assert statuses == [TaskStatus.RUNNING] * 2 + [TaskStatus.PENDING] * 3, "first come, first served"
        assert (info.in_flight, info.running, info.max_in_flight) == (5, 2, 2)
        results = [await adapter.get_result(task_id) for task_id in ids]
        await adapter.close()
        assert all(result.ok for result in results)
        assert max(result.latency_s for result in results) < 1.9, "latency counts from the send, not the wait"

    run(body())
    assert len(server.requests()) == 5 and server.peak_in_flight == 2


def test_cancelling_waiting_tasks_never_sends_them(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server, max_in_flight=1)
        running = await adapter.submit_task(chat("r", "slow [[mock latency=1]]"))
        waiting = [await adapter.submit_task(chat(f"w{i}", f"waiting {i}")) for i in range(3)]
        await requests_at(server)
        assert await adapter.cancel_waiting() == 3
        cancelled = [await adapter.get_result(task_id) for task_id in waiting]
        finished = await adapter.get_result(running)
        stats = await adapter.stats()
        await adapter.close()
        assert finished.ok, "the running request goes on"
        for result in cancelled:
            assert result.status is TaskStatus.CANCELLED and result.attempts == 0
            assert result.error and result.error.code == "cancelled" and "before it was sent" in result.error.message
        assert (stats.cancelled, stats.requests) == (3, 1)

    run(body())
    assert [entry.body and entry.body["messages"][0]["content"] for entry in server.requests()] == ["slow [[mock latency=1]]"]


def test_hand_back_names_the_waiting_tasks_of_tagged_batches_by_position(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server, max_in_flight=1)
        batch = asyncio.ensure_future(adapter.run_batch([chat("b0", "slow [[mock latency=1]]"), chat("b1", "one"), chat("b2", "two")], tag=7))
        await requests_at(server)  # b0 holds the one slot (submitted at once, u could have taken it first)
        untagged = await adapter.submit_task(chat("u", "not in a tagged batch"))
        assert sorted(await adapter.hand_back_waiting()) == [(7, 1), (7, 2)]
        assert await adapter.hand_back_waiting() == [], "handed back once"
        results = await batch
        left = await adapter.get_result(untagged)
        await adapter.close()
        assert [r.status for r in results] == [TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.CANCELLED]
        assert [r.attempts for r in results] == [1, 0, 0] and left.ok, "the untagged task stays and runs"

    run(body())
    sent = [entry.body["messages"][0]["content"] for entry in server.requests() if entry.body]
    assert sorted(sent) == ["not in a tagged batch", "slow [[mock latency=1]]"], "b1 and b2 were never sent"


def test_a_batch_stream_closed_by_its_reader_cancels_what_it_still_runs(server: MockServer) -> None:
    """A reader gone mid-batch (its driver died, its stream broke): nobody collects the rest."""

    async def body() -> None:
        adapter = make_adapter(server)
        stream = adapter.stream_batch([chat("q", "quick"), chat("h1", "one [[mock hang]]"), chat("h2", "two [[mock hang]]")])
        assert [(position, result.custom_id) for position, result in await stream.__anext__()] == [(0, "q")]
        while sum(entry.outcome == "pending" for entry in server.requests()) < 2:  # both hangs are open at the server
            await asyncio.sleep(0.01)
        await stream.aclose()
        assert (await adapter.status()).in_flight == 0
        await adapter.close()

    run(body())
    wait_for_outcome(server, "disconnected", count=2)
    assert sorted(entry.outcome for entry in server.requests()) == ["disconnected", "disconnected", "ok"]


def test_cancel_batches_cancels_the_open_tasks_of_those_tags_only(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server, max_in_flight=2)
        kept = asyncio.ensure_future(adapter.run_batch([chat("k", "kept [[mock hang]]")], tag=4))
        lost = asyncio.ensure_future(adapter.run_batch([chat("a", "running [[mock hang]]"), chat("b", "queued")], tag=3))
        while len(server.requests()) < 2:  # k and a are sent; b waits for a slot
            await asyncio.sleep(0.01)
        assert await adapter.cancel_batches([3, 99]) == 2
        assert await adapter.cancel_batches([3]) == 0, "nothing of it is left"
        lost_results = await lost
        assert [r.status for r in lost_results] == [TaskStatus.CANCELLED, TaskStatus.CANCELLED]
        assert [r.attempts for r in lost_results] == [1, 0], "the running one was sent, the queued one never"
        assert (await adapter.status()).running == 1 and not kept.done(), "the other batch runs on"
        await adapter.close()
        assert (await kept)[0].status is TaskStatus.CANCELLED

    run(body())
    assert sorted(entry.body["messages"][0]["content"] for entry in server.requests() if entry.body) == [
        "kept [[mock hang]]",
        "running [[mock hang]]",
    ]


def test_a_task_cancelled_before_it_ever_ran_still_has_a_result(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        task_id = await adapter.submit_task(chat("c", "never runs"))  # no await in between: it has not started
        assert await adapter.cancel_task(task_id) is True
        result = await adapter.get_result(task_id)
        await adapter.close()
        assert result.status is TaskStatus.CANCELLED and result.error and "before it was sent" in result.error.message

    run(body())
    assert server.requests() == []


def test_max_in_flight_must_be_positive(server: MockServer) -> None:
    with pytest.raises(ConfigError, match="max_in_flight"):
        make_adapter(server, max_in_flight=0)


def test_cancel_of_a_finished_task_returns_false(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        task_id = await adapter.submit_task(chat("f", "quick"))
        await asyncio.sleep(0)
        while not (await adapter.get_status(task_id)).is_terminal:
            await asyncio.sleep(0.01)
        assert await adapter.cancel_task(task_id) is False
        assert (await adapter.get_result(task_id)).ok
        await adapter.close()

    run(body())


def test_get_result_timeout_leaves_the_task_running(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        task_id = await adapter.submit_task(chat("t", "slow one [[mock latency=0.5]]"))
        with pytest.raises(ResultTimeout, match="still running"):
            await adapter.get_result(task_id, timeout=0.05)
        assert await adapter.get_status(task_id) is TaskStatus.RUNNING
        result = await adapter.get_result(task_id)
        await adapter.close()
        assert result.ok

    run(body())


def test_unknown_task_ids_raise_task_not_found(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        for call in (adapter.get_status, adapter.get_result, adapter.cancel_task):
            with pytest.raises(TaskNotFound, match="nope"):
                await call("nope")
        with pytest.raises(TaskNotFound):
            async for _ in adapter.stream_result("nope"):
                pass
        await adapter.close()

    run(body())


def test_429_then_200_waits_for_retry_after(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        result = await adapter.run(chat("r", "busy [[mock status=429 retry_after=0.4 times=1]]"))
        stats = await adapter.stats()
        await adapter.close()
        assert result.ok and result.attempts == 2
        assert stats.requests == 2 and stats.retries == 1 and stats.rate_limited == 1
        first, second = server.requests()
        assert first.outcome == "error:429" and second.outcome == "ok"
        assert second.received_at - first.received_at >= 0.4

    run(body())


def test_retry_after_ms_is_preferred(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        result = await adapter.run(chat("r", "busy [[mock status=429 retry_after=30 retry_after_ms=300 times=1]]"))
        await adapter.close()
        first, second = server.requests()
        assert result.ok and 0.3 <= second.received_at - first.received_at < 5

    run(body())


def test_insufficient_quota_fails_at_once(server: MockServer, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        result = await adapter.run(chat("q", "no money [[mock status=429 code=insufficient_quota]]"))
        await adapter.close()
        assert result.status is TaskStatus.FAILED and result.attempts == 1
        assert result.error and result.error.code == "insufficient_quota" and result.error.status_code == 429
        assert len(server.requests()) == 1

    with caplog.at_level(logging.WARNING):
        run(body())
    assert "insufficient_quota" in caplog.text


@pytest.mark.parametrize(("status", "code"), [(400, "bad_request"), (401, "authentication_error"), (404, "not_found"), (422, "unprocessable_entity")])
def test_client_errors_fail_at_once(server: MockServer, status: int, code: str) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        result = await adapter.run(chat("b", f"bad [[mock status={status}]]"))
        await adapter.close()
        assert result.status is TaskStatus.FAILED and result.attempts == 1
        assert result.error and result.error.code == code and result.error.status_code == status

    run(body())
    assert len(server.requests()) == 1


@pytest.mark.parametrize("directive", ["status=500", "status=503", "status=408", "drop", "invalid_json"])
def test_transient_failures_are_retried_until_success(server: MockServer, directive: str) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        result = await adapter.run(chat("t", f"flaky [[mock {directive} times=2]]"))
        await adapter.close()
        assert result.ok and result.attempts == 3

    run(body())
    assert len(server.requests()) == 3


def test_five_failed_attempts_end_failed_with_the_last_error(server: MockServer, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        result = await adapter.run(chat("x", "always down [[mock status=503]]"))
        await adapter.close()
        assert result.status is TaskStatus.FAILED and result.attempts == 5
        assert result.error and result.error.code == "server_error" and result.error.status_code == 503

    with caplog.at_level(logging.WARNING, logger="actors.adapter.retry"):
        run(body())
    assert len(server.requests()) == 5
    assert caplog.text.count("retrying in") == 4  # no sleep after the last attempt


def test_a_single_attempt_policy_never_retries(server: MockServer, caplog: pytest.LogCaptureFixture) -> None:
    """The first attempt runs outside the retry loop; its failure must still obey the policy."""

    async def body() -> None:
        adapter = make_adapter(server, retry=RetryPolicy(max_attempts=1))
        result = await adapter.run(chat("once", "down [[mock status=503]]"))
        await adapter.close()
        assert result.status is TaskStatus.FAILED and result.attempts == 1
        assert result.error and result.error.code == "server_error"

    with caplog.at_level(logging.WARNING, logger="actors.adapter.retry"):
        run(body())
    assert len(server.requests()) == 1 and "retrying in" not in caplog.text


def test_per_attempt_timeout_is_retried_then_reported(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server, retry=RetryPolicy(max_attempts=2, min_wait_s=0.01, max_wait_s=0.02))
        result = await adapter.run(chat("slow", "too slow [[mock hang]]", timeout_s=0.2))
        await adapter.close()
        assert result.status is TaskStatus.FAILED and result.attempts == 2
        assert result.error and result.error.code == "timeout"

    run(body())


def test_unknown_model_costs_none_with_a_warning(server: MockServer, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        result = await adapter.run(chat("m", "hello", model="my-local-llama"))
        await adapter.close()
        assert result.ok and result.cost_usd is None and result.usage.prompt_tokens > 0

    with caplog.at_level(logging.WARNING):
        run(body())
    assert "my-local-llama" in caplog.text


def test_responses_and_embeddings_endpoints(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        response = await adapter.run({"kind": "responses", "custom_id": "r", "input": "name three primes", "max_output_tokens": 4})
        embedding = await adapter.run({"kind": "embeddings", "custom_id": "e", "input": ["a b c", "d e"]})
        await adapter.close()
        assert response.ok and response.text and response.usage.completion_tokens == 4
        assert response.cost_usd == pytest.approx(PriceTable.default().models["gpt-4o-mini"].cost(response.usage))
        assert embedding.ok and embedding.body and len(embedding.body["data"]) == 2
        assert embedding.usage == Usage(prompt_tokens=embedding.usage.prompt_tokens) and embedding.usage.prompt_tokens > 0
        assert embedding.cost_usd == pytest.approx(embedding.usage.prompt_tokens * 0.02 / 1e6)
        assert [entry.path for entry in server.requests()] == ["/v1/responses", "/v1/embeddings"]

    run(body())


def test_stats_and_status(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server, name="ad-1")
        ok = await adapter.run(chat("a", "fine"))
        await adapter.run(chat("b", "broken [[mock status=400]]"))
        stats = await adapter.stats()
        info = await adapter.status()
        await adapter.close()
        assert (stats.requests, stats.completed, stats.failed, stats.retries) == (2, 1, 1, 0)
        assert stats.prompt_tokens == ok.usage.prompt_tokens and stats.cost_usd == pytest.approx(ok.cost_usd)
        assert info.name == "ad-1" and info.model == "gpt-4o-mini" and info.in_flight == 0
        assert info.endpoint == server.base_url and {"chat", "cancel", "stream"} <= set(info.capabilities)

    run(body())


def test_uncollected_records_are_evicted_after_the_ttl(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server, result_ttl_s=0.5)
        old = await adapter.submit_task(chat("old", "forget me"))
        while not (await adapter.get_status(old)).is_terminal:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.6)
        fresh = await adapter.submit_task(chat("fresh", "keep me"))  # arrivals sweep expired records
        with pytest.raises(TaskNotFound):
            await adapter.get_result(old)
        while not (await adapter.get_status(fresh)).is_terminal:
            await asyncio.sleep(0.01)
        newer = await adapter.submit_task(chat("newer", "sweep again"))
        assert (await adapter.get_result(fresh)).ok, "a record within its TTL stays"
        assert (await adapter.get_result(newer)).ok
        await adapter.close()

    run(body())


def test_run_batch_returns_results_in_order_and_validates_first(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        results = await adapter.run_batch([chat(f"b{i}", f"prompt {i} [[mock latency={0.05 * (3 - i)}]]") for i in range(3)])
        assert [r.custom_id for r in results] == ["b0", "b1", "b2"] and all(r.ok for r in results)
        with pytest.raises(InvalidTask):
            await adapter.run_batch([chat("fine", "ok"), {"custom_id": "bad", "messages": []}])
        await adapter.close()
        assert len(server.requests()) == 3, "nothing of an invalid batch is sent"

    run(body())


def test_streamed_request_is_retried_before_any_text(server: MockServer) -> None:
    async def body() -> None:
        adapter = make_adapter(server)
        task_id = await adapter.submit_task(chat("s", "stream after a 429 [[mock status=429 retry_after=0 times=1]]", stream=True))
        items = [item async for item in adapter.stream_result(task_id)]
        await adapter.close()
        *deltas, final = items
        assert final.ok and final.attempts == 2 and "".join(deltas) == final.text

    run(body())
