"""``rayfan run`` end to end: real Ray, the built-in mock endpoint, real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drivers.cli import main

pytestmark = pytest.mark.usefixtures("ray_session")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "prompts.jsonl"


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mock_run_of_the_examples_writes_one_record_per_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["run", str(EXAMPLES), "-o", str(out), "--mock", "--adapters", "2"]) == 0
    records = read_records(out)
    inputs = [line for line in EXAMPLES.read_text().splitlines() if line.strip()]
    assert len(records) == len(inputs) == len({r["custom_id"] for r in records})
    assert all(r["error"] is None and r["response"]["status_code"] == 200 for r in records)
    chat = next(r for r in records if r["custom_id"] == "req-001")
    assert chat["response"]["body"]["choices"][0]["message"]["content"].startswith("Mock reply:")
    assert chat["rayfan"]["cost_usd"] > 0 and chat["rayfan"]["usage"]["prompt_tokens"] > 0
    printed = capsys.readouterr().out
    assert f"requests: {len(inputs)} succeeded, 0 failed" in printed and "cost: $" in printed

    assert main(["run", str(EXAMPLES), "-o", str(out), "--mock"]) == 0
    assert len(read_records(out)) == len(inputs), "a re-run resumes: nothing is sent or written twice"
    assert f"({len(inputs)} already done" in capsys.readouterr().out


def test_bad_lines_become_error_records_and_the_rest_runs(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps({"custom_id": "good", "prompt": "hello"}),
                "{not json",
                json.dumps({"custom_id": "nobody", "method": "POST", "url": "/v1/chat/completions"}),
                json.dumps({"custom_id": "badurl", "url": "/v1/images", "body": {}}),
                json.dumps({"custom_id": "bad-field", "body": {"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}}),
                json.dumps({"custom_id": "good", "prompt": "again"}),
                json.dumps({"prompt": "no id given"}),
            ]
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    assert main(["run", str(source), "-o", str(out), "--mock"]) == 2
    by_line = {r["rayfan"]["line"]: r for r in read_records(out)}
    assert sorted(by_line) == [1, 2, 3, 4, 5, 6, 7]
    assert by_line[1]["error"] is None and by_line[7]["error"] is None
    expected = {2: "invalid_json", 3: "missing_body", 4: "unknown_url", 5: "invalid_request", 6: "duplicate_custom_id"}
    for line, code in expected.items():
        assert by_line[line]["error"]["code"] == code
        assert by_line[line]["error"]["message"].startswith(f"line {line}:")
    assert "max_tokens" in by_line[5]["error"]["message"]
    assert by_line[7]["custom_id"].startswith("line7-")
