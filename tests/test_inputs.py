"""Reading a batch: both line shapes, all three endpoints, bad lines, duplicates, defaults."""

from __future__ import annotations

import json
from pathlib import Path

from actors.models import ChatTask, EmbeddingTask, ResponsesTask
from drivers.inputs import InputProblem, InputRequest, RequestDefaults, count_requests, read_requests


def write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def batch_line(custom_id: str, url: str, body: dict) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def test_both_shapes_and_all_three_endpoints_become_tasks(tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            batch_line("c", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}),
            batch_line("r", "/v1/responses", {"model": "gpt-4o", "input": "hi", "max_output_tokens": 7}),
            batch_line("e", "/v1/embeddings", {"input": ["a", "b"]}),
            {"custom_id": "p", "prompt": "hello"},
            "   ",
            {"prompt": "no id"},
        ],
    )
    items = list(read_requests(source, RequestDefaults(model="gpt-4.1-mini", max_tokens=9, system="be brief")))
    assert all(isinstance(item, InputRequest) for item in items)
    by_id = {item.custom_id: item for item in items}
    chat, responses, embeddings, prompt = (by_id[name].task for name in "crep")
    assert isinstance(chat, ChatTask) and chat.model == "gpt-4.1-mini", "a Batch line without a model gets --model"
    assert isinstance(responses, ResponsesTask) and responses.model == "gpt-4o" and responses.max_output_tokens == 7
    assert isinstance(embeddings, EmbeddingTask) and embeddings.model == "text-embedding-3-small", "--model is a chat model"
    assert isinstance(prompt, ChatTask) and prompt.max_tokens == 9
    assert prompt.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    assert [item.line for item in items] == [1, 2, 3, 4, 6], "blank lines are skipped but keep their numbers"
    derived = items[-1].custom_id
    assert derived.startswith("line6-")
    assert [item.custom_id for item in read_requests(source)][-1] == derived, "a derived id is stable across reads"
    assert count_requests(source) == 5


def test_each_bad_line_is_a_problem_naming_its_line_and_the_rest_still_reads(tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            "{not json",
            "[1, 2]",
            {"custom_id": 7, "prompt": "x"},
            {"custom_id": "a", "url": "/v1/images", "body": {}},
            {"custom_id": "b", "method": "GET", "body": {"messages": [{"role": "user", "content": "x"}]}},
            {"custom_id": "c", "url": "/v1/chat/completions"},
            {"custom_id": "d", "body": {"messages": []}},
            {"custom_id": "e", "prompt": ""},
            {"custom_id": "ok", "prompt": "fine"},
            {"custom_id": "ok", "prompt": "again"},
        ],
    )
    items = list(read_requests(source))
    codes = [(item.line, item.code) for item in items if isinstance(item, InputProblem)]
    assert codes == [
        (1, "invalid_json"),
        (2, "invalid_line"),
        (3, "invalid_line"),
        (4, "unknown_url"),
        (5, "invalid_line"),
        (6, "missing_body"),
        (7, "invalid_request"),
        (8, "invalid_request"),
        (10, "duplicate_custom_id"),
    ]
    assert all(item.message.startswith(f"line {item.line}:") for item in items if isinstance(item, InputProblem))
    assert [item.custom_id for item in items if isinstance(item, InputRequest)] == ["ok"]
    duplicate = items[-1]
    assert isinstance(duplicate, InputProblem) and "'ok'" in duplicate.message
