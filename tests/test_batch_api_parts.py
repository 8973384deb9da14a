"""The parts of ``--batch-api`` one at a time: batch prices, the split into files, the journal,
reading answer lines, the adapter's Batch API calls (over HTTP, without Ray) and the fake
server's ``/v1/files`` and ``/v1/batches``."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from actors import Adapter, RetryPolicy
from actors.accounting.pricing import PriceTable
from actors.adapter.settings import EndpointSettings
from actors.errors import BatchApiError, ConfigError, TaskError
from actors.models import ChatTask, EmbeddingTask, TaskStatus, Usage
from drivers.batchapi.journal import BatchEntry, Journal, Stage, open_batches, status_lines
from drivers.batchapi.merge import BatchContext, lines_of, read_answer
from drivers.batchapi.options import BatchLimits
from drivers.batchapi.split import MAX_OPEN_FILES, Splitter, batch_line, left_over
from drivers.inputs import InputRequest
from drivers.mock import MockServer
from drivers.mock.batches import MockBatchConfig
from tests.conftest import TEST_KEY, run

# --- prices


def test_batch_prices_are_the_shipped_rows_and_half_of_a_price_that_has_none(tmp_path: Path) -> None:
    shipped = PriceTable.default()
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000, cached_tokens=200_000)
    for model in shipped.models:
        assert shipped.for_batch().cost(model, usage) == pytest.approx(shipped.cost(model, usage) / 2), model
    assert shipped.batch.keys() == shipped.models.keys(), "every shipped model has its batch row"

    user = tmp_path / "prices.json"
    repriced, mine = {"input": 4, "cached_input": 4, "output": 8}, {"input": 1, "cached_input": 1, "output": 1}
    user.write_text(json.dumps({"as_of": "2026-01-01", "models": {"gpt-4o": repriced}, "batch": {"mine": mine}}))
    table = PriceTable.with_overrides(user).with_command_line(["gpt-4o-mini=2,6"], ["my-deployment=gpt-4o"]).for_batch()
    plain = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert table.cost("gpt-4o", plain) == pytest.approx(6.0), "a repriced model without a batch row: half of the new price"
    assert table.cost("gpt-4o-mini", plain) == pytest.approx(4.0), "--price likewise"
    assert table.cost("my-deployment", plain) == pytest.approx(6.0), "an alias priced as its model"
    assert table.cost("mine", plain) == pytest.approx(2.0) and table.cost("gpt-5", plain) == pytest.approx(5.625)


# --- the split


def chat(custom_id: str, text: str = "hello", model: str = "gpt-4o-mini") -> ChatTask:
    return ChatTask(custom_id=custom_id, model=model, messages=[{"role": "user", "content": text}], stream=True, timeout_s=5)


def journal_in(tmp_path: Path) -> Journal:
    return Journal.open(tmp_path / "out.jsonl", "http://endpoint/v1")


def split(journal: Journal, limits: BatchLimits, requests: list[InputRequest]) -> tuple[list[BatchEntry], list[str]]:
    made: list[BatchEntry] = []
    splitter = Splitter(journal, limits, lambda entry, _units: made.append(entry))
    refused = [request.custom_id for request in requests if not splitter.add(request)]
    splitter.close()
    return made, refused


def test_files_hold_one_url_and_model_within_every_limit(tmp_path: Path) -> None:
    journal = journal_in(tmp_path)
    requests = [InputRequest(i + 1, chat(f"m{i}", model="gpt-4o-mini")) for i in range(7)]
    requests += [InputRequest(10 + i, chat(f"o{i}", "x" * 200, model="gpt-4o")) for i in range(3)]
    requests += [InputRequest(20 + i, EmbeddingTask(custom_id=f"e{i}", input=["a"] * 3)) for i in range(3)]
    requests += [InputRequest(30, chat("huge", "y" * 700, model="gpt-4o"))]
    size = len(batch_line(requests[7].task))
    made, refused = split(journal, BatchLimits(max_requests=3, max_bytes=2 * size, max_embedding_inputs=7), requests)

    assert refused == ["huge"], "alone beyond a file's bytes"
    by_model = sorted((e.model, e.requests) for e in made)
    embeddings = "text-embedding-3-small"
    expected = [("gpt-4o", 1), ("gpt-4o", 2), ("gpt-4o-mini", 1), ("gpt-4o-mini", 3), ("gpt-4o-mini", 3), (embeddings, 1), (embeddings, 2)]
    assert by_model == expected, "3 requests, 2 long lines' bytes, 7 inputs (two requests of 3) at most a file"
    for entry in made:
        lines = journal.requests_file(entry.name).read_bytes().splitlines()
        assert entry.bytes == sum(len(line) + 1 for line in lines) <= 2 * size
        parsed = [json.loads(line) for line in lines]
        assert {p["url"] for p in parsed} == {"/v1/embeddings" if entry.model.startswith("text-") else "/v1/chat/completions"}
        assert {p["body"]["model"] for p in parsed} == {entry.model}
        assert [custom_id for custom_id, _ in journal.index(entry)] == [p["custom_id"] for p in parsed]
    first = json.loads(journal.requests_file(made[0].name).read_bytes().splitlines()[0])
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    assert first == {"custom_id": "m0", "method": "POST", "url": "/v1/chat/completions", "body": body}, "as the sync path sends it: no stream, no timeout"
    assert journal.members(made[0]) == {"m0": 1, "m1": 2, "m2": 3}
    again = list(left_over(journal, made[0], {"m1"}))
    assert [(r.line, r.custom_id, r.task.model) for r in again] == [(2, "m1", "gpt-4o-mini")]


def test_more_models_than_open_files_closes_the_oldest_file(tmp_path: Path) -> None:
    journal = journal_in(tmp_path)
    requests = [InputRequest(i + 1, chat(f"k{i}", model=f"model-{i}")) for i in range(MAX_OPEN_FILES + 1)]
    made: list[BatchEntry] = []
    splitter = Splitter(journal, BatchLimits(), lambda entry, _units: made.append(entry))
    for request in requests:
        splitter.add(request)
    assert [e.model for e in made] == ["model-0"], "one file closed to open the next"
    splitter.close()
    assert len(made) == MAX_OPEN_FILES + 1


# --- the journal


def test_the_journal_is_rewritten_whole_and_sweeps_what_a_kill_left(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    journal = journal_in(tmp_path)
    made, _ = split(journal, BatchLimits(max_requests=1), [InputRequest(1, chat("a")), InputRequest(2, chat("b"))])
    journal.state.batches.append(made[0])
    journal.save()
    (journal.directory / "b000099.jsonl").write_text("a file being written when the kill came\n")
    (journal.directory / "state.json.tmp").write_text("{half a st")

    again = Journal.open(out, "http://endpoint/v1")
    again.sweep()
    assert sorted(p.name for p in again.directory.iterdir()) == ["b000001.index", "b000001.jsonl", "state.json"]
    assert again.pending_ids() == {"a"} and open_batches(out) == 1
    assert "b000001 gpt-4o-mini /v1/chat/completions: 1 requests; split" in "\n".join(status_lines(out))
    with pytest.raises(ConfigError, match="were submitted to http://endpoint/v1"):
        Journal.open(out, "http://elsewhere/v1")
    again.state.batches[0].stage = Stage.DONE
    again.save()
    assert open_batches(out) == 0 and Journal.open(out, "http://elsewhere/v1").state.endpoint == "http://elsewhere/v1"
    (again.directory / "state.json").write_text("[]")
    with pytest.raises(ConfigError, match="not a rayfan batch state"):
        Journal.read(out)


# --- answers


CONTEXT = BatchContext("batch_1", "/v1/chat/completions", "gpt-4o-mini", PriceTable.default().for_batch(), attempts=2, latency_s=30.0)


def line(**fields: object) -> bytes:
    return json.dumps({"id": "batch_req_1", "custom_id": "c", **fields}).encode()


def test_an_answer_line_is_a_result_a_failure_or_a_request_to_send_again() -> None:
    choices = [{"message": {"content": "hi"}, "finish_reason": "stop"}]
    body = {"model": "gpt-4o-mini-2024", "choices": choices, "usage": {"prompt_tokens": 10, "completion_tokens": 4}}
    ok = read_answer(line(response={"status_code": 200, "request_id": "req_1", "body": body}, error=None), CONTEXT)
    assert ok is not None and ok.result is not None and ok.record_id == "batch_req_1"
    result = ok.result
    assert (result.status, result.text, result.attempts, result.latency_s, result.request_id) == (TaskStatus.COMPLETED, "hi", 2, 30.0, "req_1")
    assert ok.result.cost_usd == pytest.approx((10 * 0.075 + 4 * 0.30) / 1e6), "the dated snapshot, at the batch price"

    refused = read_answer(line(response={"status_code": 400, "body": {"error": {"message": "no", "code": None}}}, error=None), CONTEXT)
    assert refused is not None and refused.result is not None and refused.result.error is not None
    assert (refused.result.status, refused.result.error.code, refused.result.error.status_code) == (TaskStatus.FAILED, "bad_request", 400)
    for transient in (500, 429, 503):
        again = read_answer(line(response={"status_code": transient, "body": {"error": {"message": "later"}}}, error=None), CONTEXT)
        assert again is not None and again.result is None and again.unfinished is not None and again.unfinished.status_code == transient
    expired = read_answer(line(response=None, error={"code": "batch_expired", "message": "too late"}), CONTEXT)
    assert expired is not None and expired.unfinished == TaskError(code="batch_expired", message="too late")
    for garbage in (b"{not json", b"[]", line(response=None, error=None), json.dumps({"response": {}}).encode()):
        assert read_answer(garbage, CONTEXT) is None


def test_lines_are_whole_across_chunks() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b'{"a":', b"1}\n{", b'"b":2}\n\n', b'{"c":3}'):
            yield chunk

    async def collect() -> list[bytes]:
        return [raw async for raw in lines_of(chunks())]

    assert run(collect()) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


# --- the adapter's calls, over HTTP to the fake server


def batch_file(*keys: str) -> bytes:
    return b"".join(batch_line(chat(key)) for key in keys)


def test_the_adapter_uploads_in_parts_submits_once_and_downloads_as_the_file_comes(server: MockServer) -> None:
    retry = RetryPolicy(max_attempts=2, min_wait_s=0.01, max_wait_s=0.01)
    adapter = Adapter(endpoint=EndpointSettings(base_url=server.base_url, api_key=TEST_KEY), retry=retry)
    content = batch_file("a", "b", "c")
    server.configure(batch=MockBatchConfig(hold=True))

    async def body() -> None:
        upload = "0" * 32
        for start in range(0, len(content), 100):
            await adapter.batch_upload_part(upload, content[start : start + 100])
        file_id = await adapter.batch_upload(upload, "in.jsonl")
        first = await adapter.batch_submit(file_id, "/v1/chat/completions", {"rayfan_batch": "b1"}, since=0)
        again = await adapter.batch_submit(file_id, "/v1/chat/completions", {"rayfan_batch": "b1"}, since=0)
        assert again.id == first.id and again.status == "in_progress", "the batch of this file is found, not made again"
        server.configure(batch=MockBatchConfig())
        for _ in range(1000):  # the server answers a batch as soon as it is released: a few looks
            if (info := await adapter.batch_retrieve(first.id)).status == "completed":
                break
        assert info.request_counts.completed == 3 and info.output_file_id is not None and info.ended_at is not None
        server.configure(batch=MockBatchConfig(hold_download=True))  # the server sends half the file, then waits
        download = "1" * 32
        await adapter.batch_download(download, info.output_file_id)
        parts = [await adapter.batch_download_part(download, 0)]
        server.configure(batch=MockBatchConfig())
        while part := await adapter.batch_download_part(download, sum(map(len, parts))):
            parts.append(part)
        await adapter.batch_download_end(download)
        assert len(parts) >= 2, "what has come is read before the rest has"
        assert sorted(json.loads(raw)["custom_id"] for raw in b"".join(parts).splitlines()) == ["a", "b", "c"]
        with pytest.raises(BatchApiError) as missing:
            await adapter.batch_retrieve("batch_nope")
        assert missing.value.error.status_code == 404
        with pytest.raises(ValueError):
            await adapter.batch_upload_part("../../etc/passwd", b"x")
        await adapter.close()

    run(body())
    assert [len(b.custom_ids) for b in server.batches.submissions()] == [3]
    assert [e.path for e in server.requests()] == [], "no request went through the synchronous API"


# --- the fake server's Batch API, through the SDK


def test_the_fake_batch_api_validates_lists_newest_first_and_pages(server: MockServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    mixed = batch_file("a") + batch_line(chat("b", model="gpt-4o"))
    bad = client.files.create(file=("mixed.jsonl", io.BytesIO(mixed), "application/jsonl"), purpose="batch")
    failed = client.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert failed.status == "failed" and failed.errors and failed.errors.data and failed.errors.data[0].code == "mismatched_model"
    good = client.files.create(file=("ok.jsonl", io.BytesIO(batch_file("a", "b")), "application/jsonl"), purpose="batch")
    made = [client.batches.create(input_file_id=good.id, endpoint="/v1/chat/completions", completion_window="24h").id for _ in range(3)]
    listed = [batch.id for batch in client.batches.list(limit=2)]
    assert listed == [*reversed(made), failed.id], "newest first, over two pages"
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=good.id, endpoint="/v1/moderations", completion_window="24h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")
    large = batch_file(*(f"k{i}" for i in range(12_000)))
    assert len(large) > 2**20, "beyond aiohttp's default request size"
    assert client.files.create(file=("large.jsonl", io.BytesIO(large), "application/jsonl"), purpose="batch").bytes == len(large)


# --- the adapters a Batch API run calls


@pytest.mark.usefixtures("ray_session")
def test_a_dead_adapter_is_replaced_once_and_the_call_goes_on(server: MockServer, tmp_path: Path) -> None:
    """Three uploads at once over two adapters: the first and third go to the dead one (the
    fewest transfers), both lose it, and it is replaced once; every file is uploaded."""
    import ray

    from drivers.batchapi.pool import AdapterPool
    from drivers.cluster import start_adapters

    group = start_adapters(2, endpoint=EndpointSettings(base_url=server.base_url, api_key=TEST_KEY), model="gpt-4o-mini", max_in_flight=4)
    ray.kill(group[0])
    pool = AdapterPool(group)
    source = tmp_path / "in.jsonl"
    source.write_bytes(batch_file("a", "b"))

    async def body() -> list[str]:
        return list(await asyncio.gather(*(pool.upload(source, f"{n}.jsonl") for n in ("one", "two", "three"))))

    try:
        file_ids = run(body())
        assert len(set(file_ids)) == 3, "each upload made its file"
        assert group.replaced == [1, 0], "the dead adapter was replaced once, not once per call that found it dead"
        assert ray.get(group[0].status.remote()).name.endswith("-0.1"), "its replacement answers"
    finally:
        for adapter in group:
            ray.kill(adapter)
