"""--budget-usd and --dry-run: the ledger, the estimates, and real runs that must not overshoot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from actors.accounting.pricing import PriceTable
from actors.accounting.tokens import prompt_tokens
from actors.models import ChatTask, EmbeddingTask
from drivers.budget import Budget
from drivers.cli import main
from drivers.estimate import estimate_request
from drivers.inputs import InputRequest, RequestDefaults, read_requests
from drivers.mock import MockServer
from tests.conftest import TEST_KEY

PRICES = PriceTable.default()


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def prompts_of(server: MockServer) -> list[str]:
    return [entry.body["messages"][-1]["content"] for entry in server.requests() if entry.body]


# --- the ledger


def test_reservations_never_let_the_total_pass_the_limit() -> None:
    budget = Budget(1.0, spent_usd=0.25)
    first = budget.try_reserve(0.5)
    assert first is not None and budget.try_reserve(0.5) is None, "0.25 spent + 0.5 held + 0.5 > 1.0"
    second = budget.try_reserve(0.25)
    assert second is not None and budget.reserved_usd == 0.75
    budget.settle(first, 0.125)
    assert budget.spent_usd == 0.375 and budget.reserved_usd == 0.25
    assert budget.try_reserve(0.5) is None and budget.try_reserve(0.375) is not None, "exactly up to the limit"
    budget.settle(second, None)
    assert budget.spent_usd == 0.625, "an unknown cost keeps its whole reservation as spent"


def test_rounding_goes_against_spending_and_a_closed_budget_reserves_nothing() -> None:
    budget = Budget(2e-12)
    assert [budget.try_reserve(1e-13) is not None for _ in range(3)] == [True, True, False], "each rounds up to 1e-12"
    budget = Budget(10.0)
    budget.close()
    assert budget.try_reserve(0.0) is None
    with pytest.raises(ValueError):
        Budget(0.0)


# --- estimates


def test_a_request_costs_between_its_prompt_alone_and_prompt_plus_every_allowed_output_token() -> None:
    task = ChatTask(custom_id="a", model="gpt-4o", messages=[{"role": "user", "content": "count to ten"}], max_tokens=40)
    estimate = estimate_request(task, PRICES)
    prompt = prompt_tokens(task)
    assert (estimate.prompt_tokens, estimate.output_tokens) == (prompt, 40)
    assert estimate.low_usd == pytest.approx(prompt * 2.50e-6)
    assert estimate.high_usd == pytest.approx(prompt * 2.50e-6 + 40 * 10.00e-6)
    embedding = estimate_request(EmbeddingTask(custom_id="e", input="some words"), PRICES)
    assert embedding.low_usd == embedding.high_usd and embedding.output_tokens == 0
    unknown = estimate_request(task.model_copy(update={"model": "my-local-llama"}), PRICES)
    assert unknown.low_usd is None and unknown.high_usd is None


def test_dry_run_prints_the_files_cost_range_and_sends_nothing(
    tmp_path: Path, server: MockServer, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    lines = [
        {"custom_id": "a", "prompt": "first question", "max_tokens": 10},
        {"custom_id": "b", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "second"}]}},
        {"custom_id": "c", "url": "/v1/embeddings", "body": {"input": "embed me"}},
        {"custom_id": "d", "prompt": "local", "model": "my-local-llama"},
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{broken\n")
    out = tmp_path / "out.jsonl"
    assert main(["run", str(source), "-o", str(out), "--dry-run", "--base-url", server.base_url]) == 0
    printed = capsys.readouterr().out
    tasks = [item.task for item in read_requests(source, RequestDefaults()) if isinstance(item, InputRequest)]
    priced = [estimate_request(task, PRICES) for task in tasks[:3]]
    low, high = sum(e.low_usd or 0 for e in priced), sum(e.high_usd or 0 for e in priced)
    assert high > low > 0
    assert f"estimated cost: ${low:.6f} to ${high:.6f}" in printed
    assert "4 requests to send, 1 invalid lines; nothing was sent" in printed
    assert "no known price, not in the estimate: my-local-llama (1 requests)" in printed
    assert server.requests() == [] and not out.exists()


def test_dry_run_of_a_half_done_output_prices_only_what_a_rerun_sends_and_leaves_the_output_alone(
    tmp_path: Path, server: MockServer, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"custom_id": key, "prompt": f"question {key}", "max_tokens": 10}) + "\n" for key in "abcd"))
    done = {"id": "batch_req_1", "custom_id": "a", "response": {"status_code": 200}, "error": None, "rayfan": {"line": 1, "cost_usd": 0.001}}
    failed = {"id": "batch_req_2", "custom_id": "b", "response": None, "error": {"code": "server_error", "message": "500"}, "rayfan": {"line": 2}}
    out.write_text(json.dumps(done) + "\n" + json.dumps(failed) + "\n" + '{"id": "batch_req_3", "custom_id": "c"')  # torn last line
    before = out.read_bytes()
    run_dry = ["run", str(source), "-o", str(out), "--dry-run", "--base-url", server.base_url]

    assert main(run_dry) == 0
    printed = capsys.readouterr().out
    c_and_d = [estimate_request(item.task, PRICES) for item in read_requests(source, RequestDefaults()) if isinstance(item, InputRequest)][2:]
    assert "2 requests to send, 0 invalid lines (2 lines already done in the output, not counted)" in printed
    assert f"to ${sum(e.high_usd or 0 for e in c_and_d):.6f}" in printed
    assert main([*run_dry, "--retry-failed"]) == 0
    assert "3 requests to send, 0 invalid lines (1 lines already done in the output, not counted)" in capsys.readouterr().out
    assert out.read_bytes() == before, "a dry run repairs nothing: the torn line is the real run's to cut"
    assert server.requests() == []


# --- real runs


@pytest.mark.usefixtures("ray_session")
def test_a_budget_stops_sending_before_it_could_be_overshot_and_a_larger_one_resumes(
    tmp_path: Path, server: MockServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    source = tmp_path / "in.jsonl"
    lines = [{"custom_id": "local", "prompt": "not priced", "model": "my-local-llama"}]
    lines += [{"custom_id": f"q{i}", "prompt": f"question number {i} about budgets"} for i in range(30)]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    worst = {
        item.custom_id: estimate_request(item.task, PRICES).high_usd
        for item in read_requests(source, RequestDefaults(model="gpt-4o", max_tokens=5))
        if isinstance(item, InputRequest)
    }
    budget = 6.5 * worst["q0"]
    out = tmp_path / "out.jsonl"
    flags = ["--base-url", server.base_url, "--model", "gpt-4o", "--max-tokens", "5", "--max-in-flight", "4"]

    assert main(["run", str(source), "-o", str(out), *flags, "--budget-usd", repr(budget)]) == 2
    records = read_records(out)
    assert sorted(r["custom_id"] for r in records) == sorted(worst | {"local": None}), "one record per input"
    sent = [r for r in records if r["error"] is None]
    stopped = [r for r in records if r["error"] and r["error"]["code"] == "budget_exhausted"]
    assert len(sent) + len(stopped) == 30 and len(sent) >= 6 and stopped
    spent = math.fsum(r["rayfan"]["cost_usd"] for r in sent)
    assert spent <= budget, "the real costs in the output stay within the budget"
    assert spent + min(worst[r["custom_id"]] for r in stopped) > budget, "it stopped only when the next could overshoot"
    assert len(server.requests()) == len(sent), "nothing was sent for requests not run"
    assert "my-local-llama" not in json.dumps([entry.body for entry in server.requests()])
    local = next(r for r in records if r["custom_id"] == "local")
    assert local["error"]["code"] == "unpriced_model" and local["rayfan"]["line"] == 1
    assert "rerun with a larger --budget-usd" in capsys.readouterr().out

    larger = spent + 40 * worst["q0"]
    assert main(["run", str(source), "-o", str(out), *flags, "--budget-usd", repr(larger)]) == 2, "the unpriced one is still not run"
    records = read_records(out)
    assert len(records) == 31 and sum(r["error"] is None for r in records) == 30
    assert math.fsum(r["rayfan"].get("cost_usd") or 0 for r in records) <= larger
    assert sorted(prompts_of(server)) == sorted(f"question number {i} about budgets" for i in range(30)), "none sent twice"


@pytest.mark.usefixtures("ray_session")
def test_a_user_price_file_prices_a_model_the_shipped_table_lacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --prices this model is unpriced, so --budget-usd would refuse to send it (exit 2)."""
    prices = tmp_path / "prices.json"
    local = {"input": 1.0, "cached_input": 0.5, "output": 2.0}
    prices.write_text(json.dumps({"as_of": "2026-11-01", "models": {"my-local-llama": local}}))
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"custom_id": "a", "prompt": "hello there", "model": "my-local-llama", "max_tokens": 8}) + "\n")
    out = tmp_path / "out.jsonl"
    common = ["run", str(source), "-o", str(out), "--mock", "--prices", str(prices)]

    assert main([*common, "--dry-run"]) == 0
    assert "no known price" not in capsys.readouterr().out
    assert main([*common, "--budget-usd", "1"]) == 0
    (record,) = read_records(out)
    usage = record["rayfan"]["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    expected = (usage["prompt_tokens"] * local["input"] + usage["completion_tokens"] * local["output"]) / 1e6
    assert record["rayfan"]["cost_usd"] == pytest.approx(expected)
