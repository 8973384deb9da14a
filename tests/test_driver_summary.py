"""The run's summary (counts, exit code, what is printed) and the progress bar drawn from it."""

from __future__ import annotations

import io

from actors.errors import TaskError
from actors.models import TaskResult, TaskStatus, Usage
from drivers.progress import ProgressBar
from drivers.summary import ExitCode, RunSummary


def result(status: TaskStatus = TaskStatus.COMPLETED, *, model: str = "gpt-4o-mini", cost: float | None = 0.5, attempts: int = 1) -> TaskResult:
    error = None if status is TaskStatus.COMPLETED else TaskError(code="server_error", message="boom")
    usage = Usage(prompt_tokens=10, completion_tokens=5) if error is None else Usage()
    return TaskResult(custom_id="x", status=status, model=model, usage=usage, cost_usd=cost, attempts=attempts, error=error)


def test_counts_by_outcome_decide_the_exit_code_and_the_printout() -> None:
    summary = RunSummary(budget_usd=10.0, spent_before_usd=1.0)
    summary.add_result(result(attempts=3))
    summary.add_result(result(model="gpt-4o", cost=1.5))
    summary.add_result(result(model="mystery", cost=None))
    assert summary.exit_code is ExitCode.OK and summary.written == 3
    summary.add_result(result(TaskStatus.FAILED, cost=0.0))
    summary.add_problem("invalid_json")
    summary.add_not_run("budget_exhausted")
    assert summary.exit_code is ExitCode.SOME_FAILED and summary.written == 6
    text = summary.render()
    assert "requests: 3 succeeded, 1 failed, 1 invalid lines, 1 not run" in text
    assert "failed: server_error: 1" in text and "invalid: invalid_json: 1" in text
    assert "tokens: 30 in, 15 out; 2 retries" in text
    assert "cost: $2.000000 (1 results with no known price)" in text and "  gpt-4o: $1.500000" in text
    assert "budget: $3.000000 of $10.000000 spent ($1.000000 by earlier runs); rerun with a larger --budget-usd" in text
    summary.interrupted = True
    assert summary.exit_code is ExitCode.INTERRUPTED and "run the same command again" in summary.render()
    assert "resent" not in summary.render() and "abandoned" not in summary.render()
    summary.resent, summary.abandoned = 2, 3
    assert "resent: 2 requests whose adapter died went out again (each may be billed twice)" in summary.render()
    assert "abandoned: 3 requests still open at the endpoint" in summary.render()


def test_failures_kept_from_earlier_runs_still_fail_the_exit_code() -> None:
    summary = RunSummary(already_failed=1, already_done=4)
    assert summary.exit_code is ExitCode.SOME_FAILED
    assert "--retry-failed sends them again" in summary.render()


def test_the_bar_draws_from_the_summary_at_most_once_per_interval() -> None:
    now = [100.0]
    stream = io.StringIO()
    bar = ProgressBar(8, stream=stream, interval_s=1.0, clock=lambda: now[0])
    summary = RunSummary(already_done=2)
    bar.update(summary)
    summary.add_result(result())
    now[0] += 0.5
    bar.update(summary)
    assert stream.getvalue().count("\r") == 1, "throttled"
    summary.add_result(result(attempts=2))
    now[0] += 1.5
    bar.update(summary)
    last = stream.getvalue().rsplit("\r", 1)[1]
    assert last.startswith("[############............] 4/8 |")
    assert "1.0 req/s" in last and "15 tok/s" in last and "$1.0000" in last and "1 retries" in last and "0:02" in last
    bar.close(summary)
    assert stream.getvalue().endswith("\n") and stream.getvalue().count("\r") == 3
