"""The output file as a resume journal: torn lines, records to redo, atomic rewrites, --sort."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from actors.errors import ConfigError, TaskError
from actors.models import ChatTask, TaskResult, TaskStatus, Usage
from drivers.inputs import InputProblem, InputRequest
from drivers.outputs import (
    BUDGET_EXHAUSTED,
    UNPRICED,
    OutputWriter,
    check_output,
    load_resume_state,
    not_run_record,
    problem_record,
    result_record,
)
from drivers.sorting import sort_by_line


def request(line: int, custom_id: str | None = None) -> InputRequest:
    task = ChatTask(custom_id=custom_id or f"r{line}", messages=[{"role": "user", "content": "hi"}])
    return InputRequest(line, task)


def ok(line: int, cost: float = 0.001) -> dict:
    result = TaskResult(
        custom_id=f"r{line}", status=TaskStatus.COMPLETED, text="hello", model="gpt-4o-mini",
        usage=Usage(prompt_tokens=3, completion_tokens=2), cost_usd=cost, attempts=1,
    )  # fmt: skip
    return result_record(request(line), result)


def failed(line: int) -> dict:
    result = TaskResult(
        custom_id=f"r{line}", status=TaskStatus.FAILED, model="gpt-4o-mini", cost_usd=0.0, attempts=5,
        error=TaskError(code="server_error", message="boom", status_code=500),
    )  # fmt: skip
    return result_record(request(line), result)


def write_records(path: Path, records: list[dict]) -> None:
    with OutputWriter(path) as out:
        for record in records:
            out.write(record)


def ids(path: Path) -> list[str]:
    return [json.loads(line)["custom_id"] for line in path.read_text().splitlines()]


def test_a_torn_last_line_is_cut_off_and_the_next_append_starts_clean(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write_records(out, [ok(1), ok(2)])
    whole = out.read_bytes()
    with open(out, "a") as torn:
        torn.write(json.dumps(ok(3))[:40])
    state = load_resume_state(out, retry_failed=False)
    assert state.torn and state.redone == 0
    assert out.read_bytes() == whole, "exactly the torn bytes are gone"
    assert state.done_ids == {"r1", "r2"} and not state.is_done(request(3))
    assert abs(state.cost_usd - 0.002) < 1e-12
    write_records(out, [ok(3)])
    assert ids(out) == ["r1", "r2", "r3"]


def test_not_run_records_are_redone_and_failed_ones_only_with_retry_failed(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    duplicate = InputProblem(5, "r1", "duplicate_custom_id", "line 5: custom_id 'r1' appeared on an earlier line")
    records = [
        ok(1),
        failed(2),
        not_run_record(request(3), BUDGET_EXHAUSTED, "no money"),
        not_run_record(request(4), UNPRICED, "no price"),
        problem_record(duplicate),
    ]
    write_records(out, records)
    with open(out, "a") as corrupt:
        corrupt.write("{half a record\n")

    state = load_resume_state(out, retry_failed=False)
    assert ids(out) == ["r1", "r2", "r1"], "not-run records and the corrupt line are gone"
    assert state.done_ids == {"r1", "r2"} and state.failed == 2 and state.redone == 3
    assert state.is_done(duplicate) and not state.is_done(request(3)) and not state.is_done(request(4))
    assert not list(tmp_path.glob("*.tmp")), "the rewrite leaves no scratch file"

    state = load_resume_state(out, retry_failed=True)
    assert ids(out) == ["r1"] and state.done_ids == {"r1"} and state.failed == 0
    assert not state.is_done(duplicate), "a duplicate's error record is a failure too"


def test_a_missing_output_is_a_fresh_start(tmp_path: Path) -> None:
    state = load_resume_state(tmp_path / "none.jsonl", retry_failed=True)
    assert state.failed == 0 and not state.done_ids and not (tmp_path / "none.jsonl").exists()


def test_sort_by_line_merges_runs_into_input_order(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    lines = list(range(1, 38))
    random.Random(4).shuffle(lines)
    write_records(out, [ok(line) if line % 5 else failed(line) for line in lines])
    before = sorted(out.read_text().splitlines())
    sort_by_line(out, chunk_records=5)
    assert [json.loads(text)["rayfan"]["line"] for text in out.read_text().splitlines()] == list(range(1, 38))
    assert sorted(out.read_text().splitlines()) == before, "records are moved, never changed"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.jsonl"], "no scratch files are left"


def test_records_are_ascii_lines_and_records_written_before_still_resume(tmp_path: Path) -> None:
    """U+2028 raw in a line would make a line splitter read one record as two; escaped, it cannot."""
    out = tmp_path / "out.jsonl"
    awkward = "one\u2028two\u2029three\x85é\U0001f600\ud800"
    record = ok(1)
    record["response"]["body"]["choices"][0]["message"]["content"] = awkward
    write_records(out, [record, problem_record(InputProblem(2, "r\u20282", "invalid_json", "line 2: \u2028"))])
    written = out.read_bytes()
    assert written.isascii() and b"\\u2028" in written and len(written.decode().splitlines()) == 2
    assert json.loads(written.splitlines()[0])["response"]["body"]["choices"][0]["message"]["content"] == awkward

    earlier = dict(ok(3), custom_id="r3\u2028é")  # as earlier versions wrote: UTF-8, U+2028 raw
    with open(out, "ab") as old:
        old.write(json.dumps(earlier, ensure_ascii=False).encode() + b"\n")
    state = load_resume_state(out, retry_failed=False)
    assert state.done_ids == {"r1", "r\u20282", "r3\u2028é"} and state.redone == 0 and not state.torn


def test_lines_that_are_not_records_are_dropped_on_resume_without_raising(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write_records(out, [ok(1)])
    strangers = [
        b"[" * 5000 + b"]" * 5000,
        b'{"custom_id": 5, "error": null}',
        b'{"custom_id": "a", "error": "boom", "rayfan": {}}',
        b'{"custom_id": "b", "error": null, "rayfan": 5}',
        b'{"custom_id": "c", "error": null, "rayfan": {"cost_usd": "free"}}',
        b'{"custom_id": "d", "error": null, "rayfan": {"cost_usd": NaN}}',
        b'{"custom_id": "e", "error": {"code": "duplicate_custom_id"}, "rayfan": {}}',
        b"\xff\xfe not even UTF-8",
    ]
    with open(out, "ab") as corrupt:
        corrupt.write(b"\n".join(strangers) + b"\n")
    state = load_resume_state(out, retry_failed=False)
    assert state.redone == len(strangers) and state.done_ids == {"r1"} and ids(out) == ["r1"]


def test_check_output_refuses_the_input_under_any_name_and_writes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b'{"prompt": "keep me"}\n')
    (tmp_path / "link.jsonl").symlink_to(source)
    os.link(source, tmp_path / "hard.jsonl")
    (tmp_path / "sub").mkdir()
    for same in [source, tmp_path / "sub" / ".." / "in.jsonl", tmp_path / "link.jsonl", tmp_path / "hard.jsonl"]:
        with pytest.raises(ConfigError, match="names the input file"):
            check_output(same, source=source)
    staged = tmp_path / "x.jsonl.tmp"
    os.link(source, staged)
    with pytest.raises(ConfigError, match="rewritten through"):
        check_output(tmp_path / "x.jsonl", source=staged)
    assert source.read_bytes() == b'{"prompt": "keep me"}\n'
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hard.jsonl", "in.jsonl", "link.jsonl", "sub", "x.jsonl.tmp"]


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("missing-dir/out.jsonl", "cannot write it"),
        ("/proc/rayfan-out.jsonl", "cannot write it"),
        ("in.jsonl/out.jsonl", "cannot write it"),
        (".", "is a directory"),
        ("/dev/null", "not a regular file"),
    ],
)
def test_check_output_refuses_what_cannot_be_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, reason: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match=reason) as refused:
        check_output(Path(output), source=Path("in.jsonl"))
    assert "\n" not in str(refused.value)
    assert [path.name for path in tmp_path.iterdir()] == ["in.jsonl"]


def test_check_output_leaves_a_new_output_uncreated_and_an_old_one_unchanged(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("{}\n")
    check_output(tmp_path / "new.jsonl", source=source)
    assert not (tmp_path / "new.jsonl").exists(), "a run refused later must leave no empty file"
    write_records(tmp_path / "old.jsonl", [ok(1)])
    before = (tmp_path / "old.jsonl").read_bytes()
    check_output(tmp_path / "old.jsonl", source=source)
    assert (tmp_path / "old.jsonl").read_bytes() == before
