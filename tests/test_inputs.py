"""Reading a batch: both line shapes, all three endpoints, bad lines, duplicates, defaults."""

from __future__ import annotations

import hashlib
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


def problems(path: Path, **options: int) -> dict[int, str]:
    return {item.line: item.code for item in read_requests(path, **options) if isinstance(item, InputProblem)}


def test_lines_are_split_on_newline_only_and_a_bom_is_not_part_of_line_1(tmp_path: Path) -> None:
    """Line numbers are ``wc -l``'s: a \\r or U+2028 inside a line does not start a new one."""
    source = tmp_path / "in.jsonl"
    lines = [
        b'\xef\xbb\xbf{"custom_id": "bom", "prompt": "first"}',
        '{"custom_id": "sep", "prompt": "one\u2028line\u2029still\x85"}'.encode(),
        b'{"custom_id": "cr",\r "prompt": "a lone CR is JSON whitespace"}\r',
        b'{"prompt": "no id, CRLF"}\r',
        b"\r",
        b'{"prompt": "no id, no newline"}',
    ]
    source.write_bytes(b"\n".join(lines))
    items = list(read_requests(source))
    assert all(isinstance(item, InputRequest) for item in items)
    assert [item.line for item in items] == [1, 2, 3, 4, 6] and count_requests(source) == 5
    assert [item.custom_id for item in items][:3] == ["bom", "sep", "cr"]
    sep = items[1]
    assert isinstance(sep, InputRequest) and isinstance(sep.task, ChatTask)
    assert sep.task.messages[-1]["content"] == "one\u2028line\u2029still\x85"
    # derived ids hash the line as text mode read it (CRLF as "\n"), so ids from earlier runs still match
    assert items[3].custom_id == "line4-" + hashlib.sha256(b'{"prompt": "no id, CRLF"}\n').hexdigest()[:12]
    assert items[4].custom_id == "line6-" + hashlib.sha256(b'{"prompt": "no id, no newline"}').hexdigest()[:12]


def test_no_line_can_make_the_reader_raise_each_is_a_problem_naming_its_line(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    text_part = {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}
    lines = [
        b"[" * 2000 + b"]" * 2000,
        b'{"prompt": "x", "deep": ' + b"[" * 64 + b"]" * 64 + b"}",
        b'{"prompt": "x", "n": NaN}',
        b'{"prompt": "x", "temperature": Infinity}',
        b'{"prompt": "x", "temperature": -Infinity}',
        b'{"prompt": "x", "temperature": 1e999}',
        b'{"prompt": "x", "max_tokens": 100000000000000000000000}',
        b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",
        b'{"prompt": "caf\xe9"}',
        b'{"prompt": "\\ud800 alone"}',
        b'{"url": ["/v1/chat/completions"], "body": {}}',
        json.dumps({"custom_id": "part", "body": text_part}).encode(),
        b'{"prompt": "' + b"x" * 200 + b'"}',
        b'{"custom_id": "fine", "prompt": "' + "\u2028é\U0001f600".encode() + b'"}',
        b'{"custom_id": "deep enough", "prompt": "x", "extra": ' + b"[" * 63 + b"]" * 63 + b"}",
    ]
    source.write_bytes(b"\n".join(lines) + b"\n")
    assert problems(source) == {
        1: "too_deep",
        2: "too_deep",
        3: "invalid_json",
        4: "invalid_json",
        5: "invalid_json",
        6: "invalid_json",
        7: "invalid_json",
        8: "invalid_json",
        9: "invalid_utf8",
        10: "invalid_unicode",
        11: "unknown_url",
        12: "invalid_request",
    }
    by_line = {item.line: item for item in read_requests(source)}
    assert isinstance(by_line[13], InputRequest) and isinstance(by_line[14], InputRequest), "the lines after a bad one still read"
    assert isinstance(by_line[15], InputRequest), "64 levels of nesting are read; 65 are not"
    assert all(item.message.startswith(f"line {line}:") for line, item in by_line.items() if isinstance(item, InputProblem))
    messages = {line: item.message for line, item in by_line.items() if isinstance(item, InputProblem)}
    assert "byte 0xe9 at column 16" in messages[9], "invalid UTF-8 is named, never repaired and sent"
    assert "NaN" in messages[3] and "64 bits" in messages[7] and "content.0.text" in messages[12]
    assert problems(source, max_line_bytes=150)[13] == "line_too_long"


def test_an_over_long_line_is_read_past_without_holding_it(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"prompt": "' + b"x" * (3 * 2**20) + b'"}\n{"custom_id": "next", "prompt": "y"}\n')
    first, second = read_requests(source, max_line_bytes=1000)
    assert isinstance(first, InputProblem) and first.code == "line_too_long" and "1000 bytes" in first.message
    assert isinstance(second, InputRequest) and second.line == 2 and second.custom_id == "next"
