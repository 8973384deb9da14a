"""``rayfan report``: an output file's numbers, read back exactly, from files the project's own
writers made (and, once, from a real ``rayfan run --mock``)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.errors import TaskError
from actors.models import ChatTask, EmbeddingTask, TaskResult, TaskStatus, Usage
from drivers import report as report_module
from drivers.cli import BROKEN_PIPE_EXIT, main
from drivers.inputs import InputProblem, InputRequest
from drivers.outputs import BUDGET_EXHAUSTED, UNPRICED, OutputWriter, not_run_record, problem_record, result_record
from drivers.report import Report, read_report, write_plot

ROOT = Path(__file__).resolve().parent.parent

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "prompts.jsonl"
NOON = 1_754_049_600
"""2025-08-01 12:00:00 UTC, a minute boundary: the server's created times are set from it."""


def request(line: int) -> InputRequest:
    return InputRequest(line, ChatTask(custom_id=f"r{line}", messages=[{"role": "user", "content": "hi"}]))


def ok(line: int, *, latency: float, created: int | None, cost: float | None = 0.001, model: str = "gpt-4o-mini", attempts: int = 1) -> dict:
    body = None if created is None else {"object": "chat.completion", "created": created, "model": model, "choices": []}
    result = TaskResult(
        custom_id=f"r{line}", status=TaskStatus.COMPLETED, text="hello", body=body, model=model,
        usage=Usage(prompt_tokens=10 + line, completion_tokens=line), cost_usd=cost, attempts=attempts, latency_s=latency,
    )  # fmt: skip
    return result_record(request(line), result)


def failed(line: int, code: str, *, latency: float, attempts: int) -> dict:
    result = TaskResult(
        custom_id=f"r{line}", status=TaskStatus.FAILED, model="gpt-4o-mini", cost_usd=0.0, attempts=attempts,
        latency_s=latency, error=TaskError(code=code, message="boom", status_code=500),
    )  # fmt: skip
    return result_record(request(line), result)


def write_records(path: Path, records: list[dict]) -> None:
    with OutputWriter(path) as out:
        for record in records:
            out.write(record)


def mixed_records() -> list[dict]:
    """Ten sent requests with latencies 0.1 .. 1.0 s (two failed), one failure never sent,
    one invalid line, three not run."""
    return [
        ok(1, latency=0.3, created=NOON + 5),
        ok(2, latency=0.1, created=NOON + 59),
        ok(3, latency=0.7, created=NOON + 60, attempts=3),
        ok(4, latency=1.0, created=NOON + 185, model="gpt-4o", cost=0.01),
        ok(5, latency=0.5, created=None),  # a streamed chat: rayfan synthesized its body, no server time
        ok(6, latency=0.2, created=NOON + 190, model="my-llama", cost=None),
        ok(7, latency=0.9, created=NOON + 250, attempts=2),
        ok(8, latency=0.4, created=NOON + 61),
        failed(9, "server_error", latency=0.8, attempts=5),
        failed(10, "timeout", latency=0.6, attempts=2),
        failed(11, "invalid_request", latency=0.0, attempts=0),  # refused before sending: no latency
        problem_record(InputProblem(12, "line12-x", "invalid_json", "line 12: not JSON")),
        not_run_record(request(13), BUDGET_EXHAUSTED, "no money"),
        not_run_record(request(14), BUDGET_EXHAUSTED, "no money"),
        not_run_record(request(15), UNPRICED, "no price"),
    ]


def test_every_kind_of_record_is_counted_exactly(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    write_records(out, mixed_records()[:8])
    with open(out, "a") as corrupt:
        corrupt.write("{half a record\n\n")  # a corrupt line and a blank one: resume would drop both
    write_records(out, mixed_records()[8:])

    report = read_report(out)
    assert report.records == 15 and report.not_records == 2 and report.torn_bytes == 0 and report.foreign == 0
    assert report.succeeded == 8
    assert report.failed == {"server_error": 1, "timeout": 1, "invalid_request": 1}
    assert report.invalid == {"invalid_json": 1}
    assert report.not_run == {BUDGET_EXHAUSTED: 2, UNPRICED: 1}
    assert report.retries == 2 + 1 + 4 + 1
    assert report.prompt_tokens == sum(10 + line for line in range(1, 9))
    assert report.completion_tokens == sum(range(1, 9))
    assert report.cost_by_model == pytest.approx({"gpt-4o-mini": 0.006, "gpt-4o": 0.01}, abs=1e-12)
    assert report.unpriced == 1
    latency = report.latency
    assert latency.requests == latency.sampled == 10 and latency.exact
    assert latency.percentiles_s == {50: 0.5, 90: 0.9, 99: 1.0} and latency.max_s == 1.0
    minute = NOON // 60
    assert report.per_minute == {minute: 2, minute + 1: 2, minute + 3: 2, minute + 4: 1} and report.timed == 7
    assert (report.first_created, report.last_created) == (NOON + 5, NOON + 250)

    lines = report.render().splitlines()
    assert lines == [
        f"{out}: 15 records",
        "requests: 8 succeeded, 3 failed, 1 invalid lines, 3 not run",
        "  failed: invalid_request: 1, server_error: 1, timeout: 1",
        "  invalid: invalid_json: 1",
        "  not run: budget_exhausted: 2, unpriced_model: 1",
        "tokens: 116 in, 36 out; 8 retries",
        "cost: $0.016000 (1 results with no known price)",
        "  gpt-4o: $0.010000",
        "  gpt-4o-mini: $0.006000",
        "latency of 10 sent requests (slot to result, rate-limit waits and retries included; exact):"
        " p50 0.500s, p90 0.900s, p99 1.000s, max 1.000s",
        "responses per minute by the server's clock (7 of 8 successes carry its time):"
        " mean 1.7 from 2025-08-01 12:00:05 to 12:04:10 UTC, busiest minute 2 at 12:00",
        "2 lines are not records: not counted; the next `rayfan run` drops them and sends those requests again",
    ]


def test_the_command_prints_the_report_and_exits_0_whatever_the_records_say(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    write_records(out, mixed_records())
    assert main(["report", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == read_report(out).render() + "\n" and captured.err == ""


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Path) -> None:
    """``rayfan report out.jsonl | head -1``: the pipe's reader is gone before the report is written."""
    out = tmp_path / "out.jsonl"
    write_records(out, mixed_records())
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails with EPIPE
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "drivers.cli", "report", str(out)], cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, check=False
        )
    finally:
        os.close(write_end)
    assert completed.returncode == BROKEN_PIPE_EXIT and completed.stderr == ""


def test_a_torn_last_line_is_reported_not_counted_and_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    write_records(out, [ok(1, latency=0.25, created=NOON), ok(2, latency=0.75, created=NOON)])
    torn = json.dumps(ok(3, latency=0.5, created=NOON))[:40]
    with open(out, "a") as kill_mid_write:
        kill_mid_write.write(torn)
    before = out.read_bytes()

    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_bytes() == before, "the report repairs nothing; rayfan run does, on resume"
    report = read_report(out)
    assert report.records == report.succeeded == 2 and report.torn_bytes == 40 and report.not_records == 0
    assert report.latency.percentiles_s == {50: 0.25, 90: 0.75, 99: 0.75}
    assert "torn last line: 40 bytes with no newline (a kill mid-write, or a run still writing): not counted;" in printed
    assert "mean 2.0 from 2025-08-01 12:00:00 to 12:00:00 UTC" in printed, "answers within a second are a minute's, not 120 a minute"


def test_an_empty_file_reports_zeros(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"")
    report = read_report(out)
    assert report == Report(path=out)
    assert "latency: no request was sent" in report.render()


def test_records_without_rayfans_fields_are_set_apart(tmp_path: Path) -> None:
    """Resume keeps a bare Batch API record as done; the report says it could not count it."""
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "batch_req_1", "custom_id": "a", "response": None, "error": None}) + "\n")
    report = read_report(out)
    assert report.foreign == 1 and report.records == 1 and report.succeeded == 0
    assert "1 records without rayfan's fields: not counted above" in report.render()


def test_past_the_sample_size_percentiles_come_from_a_seeded_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_module, "SAMPLE_SIZE", 50)
    out = tmp_path / "out.jsonl"
    write_records(out, [ok(line, latency=line / 1000, created=None) for line in range(1, 1001)])
    first, again = read_report(out), read_report(out)
    latency = first.latency
    assert latency.requests == 1000 and latency.sampled == 50 and not latency.exact
    assert latency.max_s == 1.0, "the max is exact, sampled or not"
    assert first.latency == again.latency, "the sample is seeded: the same file, the same numbers"
    assert 0.3 < latency.percentiles_s[50] < 0.7 and latency.percentiles_s[50] <= latency.percentiles_s[90] <= latency.percentiles_s[99] <= 1.0
    assert "latency of 1000 sent requests (slot to result, rate-limit waits and retries included; from a uniform sample of 50 of them)" in first.render()


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_a_file_that_cannot_be_read_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    path = tmp_path / "none.jsonl"
    if kind == "directory":
        path.mkdir()
    assert main(["report", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"rayfan report: error: {path}: cannot read it (")


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"rayfan {importlib.metadata.version('rayfan')}\n"


def test_rpm_without_plot_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["report", str(tmp_path / "out.jsonl"), "--rpm", "60"])
    assert exited.value.code == 1


# --- the chart


def test_plot_writes_a_png_that_decodes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = pytest.importorskip("matplotlib.image")
    out, png = tmp_path / "out.jsonl", tmp_path / "rate.png"
    write_records(out, mixed_records())
    assert main(["report", str(out), "--plot", str(png), "--rpm", "3"]) == 0
    assert capsys.readouterr().out.endswith(f"chart: {png}\n")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    pixels = image.imread(png)
    assert pixels.shape == (450, 1000, 4)
    assert pixels[..., :3].min() < 0.5, "something is drawn on the white"


def test_plot_with_no_timed_record_prints_the_report_then_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "out.jsonl", tmp_path / "rate.png"
    embeddings = InputRequest(1, EmbeddingTask(custom_id="e1", model="text-embedding-3-small", input="hi"))
    result = TaskResult(custom_id="e1", status=TaskStatus.COMPLETED, body={"object": "list", "data": []}, model="text-embedding-3-small", attempts=1)
    write_records(out, [result_record(embeddings, result), failed(2, "server_error", latency=1.0, attempts=5)])
    assert main(["report", str(out), "--plot", str(png)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{out}: 2 records\n")
    assert captured.err.count("\n") == 1 and captured.err.startswith("rayfan report: error: --plot: no record in")
    assert not png.exists()


def test_plot_without_matplotlib_is_a_one_line_error_naming_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the plot extra sees
    out, png = tmp_path / "out.jsonl", tmp_path / "rate.png"
    write_records(out, mixed_records())
    assert main(["report", str(out), "--plot", str(png)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "", "it fails before reading a file that may hold millions of lines"
    assert captured.err == "rayfan report: error: --plot needs matplotlib: pip install 'rayfan[plot]' (or: pip install matplotlib)\n"
    assert not png.exists()


def test_write_plot_refuses_a_report_with_nothing_to_draw(tmp_path: Path) -> None:
    with pytest.raises(report_module.NothingToPlot):
        write_plot(Report(path=tmp_path / "out.jsonl"), tmp_path / "rate.png")


# --- against a real run


@pytest.mark.usefixtures("ray_session")
def test_the_report_of_a_mock_run_says_what_the_run_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["run", str(EXAMPLES), "-o", str(out), "--mock"]) == 0
    run_lines = capsys.readouterr().out.splitlines()
    assert main(["report", str(out)]) == 0
    report_lines = capsys.readouterr().out.splitlines()

    requests = next(line for line in report_lines if line.startswith("requests: "))
    assert next(line for line in run_lines if line.startswith("requests: ")) == requests + " (0 already done before this run)"
    for prefix in ("tokens: ", "cost: "):
        assert next(line for line in run_lines if line.startswith(prefix)) == next(line for line in report_lines if line.startswith(prefix))

    records = [json.loads(line) for line in out.read_text().splitlines()]
    report = read_report(out)
    assert report.records == report.succeeded == len(records)
    latencies = sorted(record["rayfan"]["latency_s"] for record in records)
    assert report.latency.max_s == latencies[-1] and report.latency.percentiles_s[50] == latencies[(len(latencies) + 1) // 2 - 1]
    timed = [r for r in records if "created" in r["response"]["body"] or "created_at" in r["response"]["body"]]
    assert report.timed == len(timed) == sum(report.per_minute.values())
