"""Writing a Batch API run's records: into the output, counted by the summary, remembered as
done (so an answer read twice, from a file read again, is written once), drawn on the bar."""

from __future__ import annotations

from typing import Any

from actors.errors import TaskError
from actors.models import TaskResult, TaskStatus
from drivers.batchapi.summary import BatchRunSummary
from drivers.inputs import InputProblem, InputRequest
from drivers.outputs import OutputWriter, ResumeState, line_result_record, not_run_record, problem_record
from drivers.progress import ProgressBar


class Records:
    def __init__(self, out: OutputWriter, resume: ResumeState, summary: BatchRunSummary, progress: ProgressBar | None) -> None:
        self.out = out
        self.resume = resume
        self.summary = summary
        self._progress = progress

    def is_done(self, custom_id: str) -> bool:
        return custom_id in self.resume.done_ids

    def result(self, line: int, result: TaskResult, **more: str | None) -> None:
        self.summary.add_result(result)
        self._write(line_result_record(line, result, **more))

    def failed(self, line: int, custom_id: str, model: str, error: TaskError, *, attempts: int = 0) -> None:
        """A request that ends without an answer: its batch could not be made, or never answered it."""
        self.result(line, TaskResult(custom_id=custom_id, status=TaskStatus.FAILED, cost_usd=0.0, model=model, attempts=attempts, error=error))

    def not_run(self, request: InputRequest, code: str, message: str) -> None:
        self.summary.add_not_run(code)
        self._write(not_run_record(request, code, f"not sent: {message}; a re-run sends it"))

    def problem(self, problem: InputProblem) -> None:
        self.summary.add_problem(problem.code)
        self._write(problem_record(problem))

    def _write(self, record: dict[str, Any]) -> None:
        self.out.write(record)
        self.resume.remember(record)
        if self._progress is not None:
            self._progress.update(self.summary)
