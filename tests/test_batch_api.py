"""``rayfan run --batch-api`` end to end: the real CLI, a real local Ray, and the fake server's
``/v1/files`` and ``/v1/batches`` over HTTP through the SDK.

Every test checks the two promises: each input ends as exactly one record, and no request is
submitted twice unless its batch left it unfinished (the fake server logs every batch it
made, and which custom_ids it carried). Waits are on conditions: the journal's stage, the
server's log of batches; the fake server's batches are held and released by ``configure``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest
import ray

from actors.accounting.pricing import PriceTable
from actors.models import Usage
from drivers.batchapi.journal import Journal
from drivers.cli import main
from drivers.mock import MockServer
from drivers.mock.batches import MockBatchConfig
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.usefixtures("ray_session")

POLL = ("--batch-poll", "0.02")
WAIT_S = 60.0


def write_lines(path: Path, lines: list[dict[str, Any] | str]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def prompt(key: str, text: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 20}
    return {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body}


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_record_each(path: Path, keys: list[str]) -> dict[str, dict[str, Any]]:
    found = records(path)
    assert sorted(r["custom_id"] for r in found) == sorted(keys), "exactly one record per input"
    return {r["custom_id"]: r for r in found}


def submitted(server: MockServer) -> Counter[str]:
    return Counter(custom_id for batch in server.batches.submissions() for custom_id in batch.custom_ids)


def sync_requests(server: MockServer) -> list[str]:
    return [entry.body["messages"][-1]["content"] for entry in server.requests() if entry.body and entry.path == "/v1/chat/completions"]


def wait_until(condition: Callable[[], bool], what: str, process: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"rayfan exited with {process.returncode} before {what}")
        assert time.monotonic() < deadline, f"not within {WAIT_S:.0f} s: {what}"
        time.sleep(0.02)


def stages(out: Path) -> list[str]:
    journal = Journal.read(out)
    return [entry.stage.value for entry in journal.state.batches] if journal else []


@pytest.fixture
def rayfan(server: MockServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., int]:
    """``rayfan run IN -o OUT --base-url <fake server> --batch-api ARGS...`` in-process, with a key."""
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)

    def run(*args: str, source: Path = tmp_path / "in.jsonl", out: Path = tmp_path / "out.jsonl") -> int:
        return main(["run", str(source), "-o", str(out), "--base-url", server.base_url, "--adapters", "1", *args])

    return run


@pytest.fixture
def background() -> Iterator[Callable[[Callable[[], int]], Future[int]]]:
    """Runs a call in a thread, for a test that acts on the server while a run waits on it."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield lambda call: pool.submit(call)


def test_a_batch_run_answers_as_the_sync_run_at_half_the_price(
    tmp_path: Path, server: MockServer, rayfan: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    lines: list[dict[str, Any] | str] = [prompt(f"a{i}", f"question number {i}") for i in range(7)]
    lines += [prompt(f"b{i}", f"other model {i}", model="gpt-4o") for i in range(2)]
    lines += [{"custom_id": "e1", "method": "POST", "url": "/v1/embeddings", "body": {"model": "text-embedding-3-small", "input": ["x", "y"]}}]
    lines += ["{not json", {"custom_id": "p1", "prompt": "the shorthand"}]
    write_lines(tmp_path / "in.jsonl", lines)
    keys = [f"a{i}" for i in range(7)] + ["b0", "b1", "e1", "p1"]
    sync_out, batch_out = tmp_path / "sync.jsonl", tmp_path / "batch.jsonl"
    assert rayfan("--max-tokens", "20", out=sync_out) == 2, "the bad line fails either way"
    server.reset()
    server.configure(batch=MockBatchConfig(max_requests=3))  # the server refuses a batch of more than 3
    assert rayfan("--max-tokens", "20", "--batch-api", "--batch-max-requests", "3", *POLL, out=batch_out) == 2

    assert sync_requests(server) == [], "no request went through the synchronous API"
    bad = next(r["custom_id"] for r in records(sync_out) if r["error"] is not None)
    sync, batch = one_record_each(sync_out, [*keys, bad]), one_record_each(batch_out, [*keys, bad])
    assert batch[bad]["error"]["code"] == "invalid_json" and batch[bad]["error"]["message"].startswith("line 11:")
    assert submitted(server) == Counter(keys), "each request submitted once"
    made = server.batches.submissions()
    assert sorted(len(b.custom_ids) for b in made) == [1, 2, 2, 3, 3], "8 + 2 + 1 requests, 3 at most a file"
    model_of = {"a": "gpt-4o-mini", "p": "gpt-4o-mini", "b": "gpt-4o", "e": "text-embedding-3-small"}
    assert all(model_of[key[0]] == b.model for b in made for key in b.custom_ids), "one model per batch"
    batch_prices = PriceTable.default().for_batch()
    for key in keys:
        one, other = batch[key], sync[key]
        assert one["rayfan"]["batch_id"] in {b.batch_id for b in made if key in b.custom_ids}
        assert one["rayfan"]["line"] == other["rayfan"]["line"] and one["rayfan"]["attempts"] == 1
        assert one["response"]["status_code"] == 200 and one["id"].startswith("batch_req_mock"), "the Batch API's own id"
        body, sync_body = one["response"]["body"], other["response"]["body"]
        assert all(body.get(part) == sync_body.get(part) for part in ("choices", "data", "usage")), "the same answer"
        assert one["rayfan"]["usage"] == other["rayfan"]["usage"]
        usage = Usage.model_validate(one["rayfan"]["usage"])
        assert one["rayfan"]["cost_usd"] == pytest.approx(batch_prices.cost(one["rayfan"]["model"], usage))
        assert one["rayfan"]["cost_usd"] == pytest.approx(other["rayfan"]["cost_usd"] / 2), "half the price"
    summary = capsys.readouterr().out
    assert "batch API: 5 files uploaded, 5 batches submitted; 5 batches collected (5 completed)" in summary
    assert stages(batch_out) == ["done"] * 5
    assert sorted(p.name for p in Journal.directory_of(batch_out).iterdir()) == ["state.json"], "batch files removed once collected"


def test_errors_in_the_error_file_fail_or_go_again_as_the_sync_path_would(
    tmp_path: Path, server: MockServer, rayfan: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    write_lines(
        tmp_path / "in.jsonl",
        [
            prompt("ok", "a plain question"),
            prompt("refused", "a bad one [[mock status=400]]"),
            prompt("flaky", "a transient one [[mock status=500 times=1]]"),
            prompt("limited", "a rate limited one [[mock status=429 times=1]]"),
        ],
    )
    assert rayfan("--batch-api", *POLL) == 2, "one request failed for good"

    found = one_record_each(tmp_path / "out.jsonl", ["ok", "refused", "flaky", "limited"])
    assert found["refused"]["error"]["code"] == "bad_request" and found["refused"]["error"]["status_code"] == 400
    assert found["refused"]["rayfan"]["attempts"] == 1 and found["refused"]["response"] is None
    for key in ("flaky", "limited"):
        assert found[key]["error"] is None and found[key]["rayfan"]["attempts"] == 2, "a 5xx or 429 goes again, in a new batch"
    assert found["ok"]["rayfan"]["attempts"] == 1
    assert submitted(server) == Counter({"ok": 1, "refused": 1, "flaky": 2, "limited": 2})
    assert "2 requests left unfinished by their batch went in a new one" in capsys.readouterr().out


def test_an_expired_batch_sends_its_unfinished_requests_again_in_a_new_batch(
    tmp_path: Path, server: MockServer, rayfan: Callable[..., int]
) -> None:
    """The first batch expires with two requests unanswered; one is answered by the second batch,
    the other never is, and after three batches its record says so."""
    write_lines(
        tmp_path / "in.jsonl",
        [prompt("quick", "answered at once"), prompt("slow", "late once [[mock hang times=1]]"), prompt("stuck", "never [[mock hang]]")],
    )
    server.configure(batch=MockBatchConfig(window_s=0.5))
    assert rayfan("--batch-api", *POLL) == 2

    found = one_record_each(tmp_path / "out.jsonl", ["quick", "slow", "stuck"])
    assert found["quick"]["error"] is None and found["quick"]["rayfan"]["attempts"] == 1
    assert found["slow"]["error"] is None and found["slow"]["rayfan"]["attempts"] == 2
    assert found["stuck"]["error"]["code"] == "batch_expired" and "(after 3 batches)" in found["stuck"]["error"]["message"]
    assert found["stuck"]["rayfan"]["status"] == "FAILED"
    assert submitted(server) == Counter({"quick": 1, "slow": 2, "stuck": 3})
    assert sync_requests(server) == []
    assert stages(tmp_path / "out.jsonl") == ["done"] * 3


def test_with_batch_unfinished_sync_an_expired_batch_sends_the_rest_through_the_sync_api(
    tmp_path: Path, server: MockServer, rayfan: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    write_lines(tmp_path / "in.jsonl", [prompt("quick", "answered at once"), "", prompt("slow", "too slow for a batch [[mock hang times=1]]")])
    server.configure(batch=MockBatchConfig(window_s=0.5))
    assert rayfan("--batch-api", "--batch-unfinished", "sync", *POLL) == 0

    found = one_record_each(tmp_path / "out.jsonl", ["quick", "slow"])
    assert found["slow"]["error"] is None and "batch_id" not in found["slow"]["rayfan"], "answered by the synchronous API"
    assert found["slow"]["rayfan"]["line"] == 3, "with its own input line"
    assert found["quick"]["rayfan"]["batch_id"] == server.batches.submissions()[0].batch_id
    assert submitted(server) == Counter({"quick": 1, "slow": 1}), "no second batch"
    assert sync_requests(server) == ["too slow for a batch [[mock hang times=1]]"]
    assert "1 requests left unfinished by their batch went through the synchronous API" in capsys.readouterr().out
    assert stages(tmp_path / "out.jsonl") == ["done"]
    assert sorted(p.name for p in Journal.directory_of(tmp_path / "out.jsonl").iterdir()) == ["state.json"]


def test_a_batch_cancelled_at_the_endpoint_goes_again_and_one_whose_queue_is_full_waits(
    tmp_path: Path, server: MockServer, rayfan: Callable[..., int], background: Callable[[Callable[[], int]], Future[int]]
) -> None:
    """A batch cancelled by someone else (the dashboard, the SDK) is sent again; batches the
    model's queue cannot take yet wait for one of ours to end, without using up attempts."""
    keys = [f"k{i}" for i in range(6)]
    write_lines(tmp_path / "in.jsonl", [prompt(key, f"question {key}") for key in keys])
    one_batch = 2 * (5 + 20)  # two requests of 4 words + 1 message, 20 max tokens: what one batch queues
    server.configure(batch=MockBatchConfig(hold=True, queue_tokens=one_batch))
    run = background(lambda: rayfan("--batch-api", "--batch-max-requests", "2", *POLL))
    wait_until(lambda: len(server.batches.submissions()) >= 3, "three batches made, two refused for the full queue")
    first = server.batches.submissions()[0].batch_id
    client = openai.OpenAI(base_url=server.base_url, api_key=TEST_KEY, max_retries=0)
    assert client.batches.cancel(first).status == "cancelling"
    wait_until(lambda: len(server.batches.submissions()) >= 4, "the cancelled batch's requests sent again")
    server.configure(batch=MockBatchConfig(queue_tokens=one_batch))
    assert run.result(timeout=WAIT_S) == 0

    found = one_record_each(tmp_path / "out.jsonl", keys)
    cancelled = set(server.batches.submissions()[0].custom_ids)
    assert all(found[key]["rayfan"]["attempts"] == (2 if key in cancelled else 1) for key in keys), "a full queue costs no attempt"
    counts = submitted(server)
    assert all(counts[key] >= 2 for key in cancelled), "sent again after the cancel"
    completed = [batch for batch in server.batches.submissions() if client.batches.retrieve(batch.batch_id).status == "completed"]
    taken = Counter(key for batch in completed for key in batch.custom_ids)
    assert taken == Counter(keys), "each request answered by exactly one batch"


def test_budget_and_dry_run_use_batch_prices(
    tmp_path: Path, server: MockServer, rayfan: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    keys = [f"k{i}" for i in range(10)]
    write_lines(tmp_path / "in.jsonl", [prompt(key, f"question {key}", model="gpt-4o") for key in keys])
    assert rayfan("--dry-run") == 0 and rayfan("--dry-run", "--batch-api") == 0
    standard, batch = (float(x) for x in re.findall(r"estimated cost: \$[0-9.]+ to \$([0-9.]+)", capsys.readouterr().out))
    assert batch == pytest.approx(standard / 2, rel=1e-3) and batch > 0
    assert server.batches.submissions() == [] and server.requests() == [], "a dry run sends nothing"

    worst_each = batch / len(keys)
    assert rayfan("--batch-api", "--budget-usd", f"{worst_each * 4.5:.12f}", *POLL) == 2
    found = one_record_each(tmp_path / "out.jsonl", keys)
    sent = [key for key in keys if found[key]["error"] is None]
    assert len(sent) == 4 and all(found[key]["error"]["code"] == "budget_exhausted" for key in keys if key not in sent)
    assert sum(found[key]["rayfan"]["cost_usd"] for key in sent) <= worst_each * 4.5
    assert "at batch prices" in next(found[key]["error"]["message"] for key in keys if key not in sent)

    assert rayfan("--batch-api", "--budget-usd", "1", *POLL) == 0, "a larger budget sends the rest"
    one_record_each(tmp_path / "out.jsonl", keys)
    assert submitted(server) == Counter(keys)


def test_a_rejected_key_stops_submitting_and_a_rerun_with_a_good_key_sends_everything(
    tmp_path: Path, server: MockServer, rayfan: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [f"k{i}" for i in range(4)]
    write_lines(tmp_path / "in.jsonl", [prompt(key, f"question {key}", model=("gpt-4o", "gpt-4o-mini")[i % 2]) for i, key in enumerate(keys)])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-revoked")
    server.configure(revoked_keys=frozenset({"sk-revoked"}))
    assert main(["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--base-url", server.base_url, "--batch-api", *POLL]) == 2
    found = one_record_each(tmp_path / "out.jsonl", keys)
    assert {r["error"]["code"] for r in found.values()} == {"key_rejected"} and {r["rayfan"]["status"] for r in found.values()} == {"NOT_RUN"}
    assert server.batches.submissions() == []

    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    assert main(["run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--base-url", server.base_url, "--batch-api", *POLL]) == 0
    assert all(r["error"] is None for r in one_record_each(tmp_path / "out.jsonl", keys).values())
    assert submitted(server) == Counter(keys)


def start_rayfan(source: Path, out: Path, server: MockServer, *args: str) -> subprocess.Popen[str]:
    """A ``rayfan run --batch-api`` process on this session's Ray; its output goes to files beside ``out``."""
    command = [sys.executable, "-m", "drivers.cli", "run", str(source), "-o", str(out), "--base-url", server.base_url]
    command += ["--address", ray.get_runtime_context().gcs_address, "--adapters", "1", "--batch-api", *POLL, *args]
    env = {**os.environ, "OPENAI_API_KEY": TEST_KEY}
    with open(out.with_suffix(".stdout"), "w") as stdout, open(out.with_suffix(".stderr"), "w") as stderr:
        return subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr, text=True)


def kill_9(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=WAIT_S) == -signal.SIGKILL


def test_kill_9_while_submitting_then_ctrl_c_while_waiting_neither_loses_a_record_nor_submits_twice(
    tmp_path: Path, server: MockServer, rayfan: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    """First killed -9 after the server made both batches but before either answer reached the
    driver (only a search of the server's batches can find them), then stopped with Ctrl-C
    while they run; the third run collects them. The server saw each request submitted once."""
    keys = [f"k{i}" for i in range(6)]
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(source, [prompt(key, f"question {key}", model=("gpt-4o", "gpt-4o-mini")[i % 2]) for i, key in enumerate(keys)])
    server.configure(batch=MockBatchConfig(hold=True, hold_create_answer=True))
    first = start_rayfan(source, out, server)
    wait_until(lambda: len(server.batches.submissions()) == 2 and stages(out) == ["submitting"] * 2, "both batches made, unanswered", first)
    kill_9(first)
    assert out.read_text() == ""

    with pytest.raises(SystemExit) as refused:
        rayfan()
    assert refused.value.code == 1, "a run without --batch-api refuses an output with batches not collected"
    assert server.requests() == [] and len(server.batches.submissions()) == 2

    server.configure(batch=MockBatchConfig(hold=True))
    second = start_rayfan(source, out, server)
    wait_until(lambda: stages(out) == ["submitted"] * 2, "both batches found and followed", second)
    second.send_signal(signal.SIGINT)
    assert second.wait(timeout=WAIT_S) == 130
    assert "2 batches still open at the endpoint" in out.with_suffix(".stdout").read_text()
    assert out.read_text() == "" and len(server.batches.submissions()) == 2, "found, not made again"
    assert TEST_KEY not in (Journal.directory_of(out) / "state.json").read_text()
    capsys.readouterr()
    assert main(["status", "--batches", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "2 batches (2 open)" in shown and shown.count("in_progress: 0 completed, 0 failed of 3") == 2

    server.configure(batch=MockBatchConfig())
    assert rayfan("--batch-api", *POLL) == 0
    found = one_record_each(out, keys)
    assert {r["rayfan"]["batch_id"] for r in found.values()} == {b.batch_id for b in server.batches.submissions()}
    assert submitted(server) == Counter(keys), "each request submitted exactly once"
    assert server.requests() == []
