"""What one run did, kept by one object: the progress bar draws it, the end-of-run summary
prints it, and the exit code is read from it."""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import BaseModel, Field

from actors.models import TaskResult, TaskStatus
from drivers.outputs import BUDGET_EXHAUSTED
from drivers.rate_report import RateReport


class ExitCode(enum.IntEnum):
    """``rayfan run``'s exit codes; each tells a script something different to do next."""

    OK = 0
    USAGE = 1
    SOME_FAILED = 2
    INVALID_INPUT = 3
    DEADLINE = 4
    INTERRUPTED = 130

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "every record in the output succeeded",
    ExitCode.USAGE: "bad flags or an unreadable input file: nothing was sent",
    ExitCode.SOME_FAILED: "the output has failed records, invalid lines or requests not run (budget)",
    ExitCode.INVALID_INPUT: "--strict found bad lines: nothing was sent",
    ExitCode.DEADLINE: "--deadline reached: what completed is written; the same command resumes",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C): what completed is written; the same command resumes",
}


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _breakdown(counts: dict[str, int]) -> str:
    return ", ".join(f"{code}: {n}" for code, n in sorted(counts.items()))


class RunSummary(BaseModel):
    """Totals of one run. Records an earlier run wrote are counted apart, as already done."""

    output: Path | None = None
    succeeded: int = 0
    failed: dict[str, int] = Field(default_factory=dict)
    """By error code."""
    invalid: dict[str, int] = Field(default_factory=dict)
    """Input lines that could not be sent, by problem code."""
    not_run: dict[str, int] = Field(default_factory=dict)
    """Requests deliberately not sent (budget), by code; a later run sends them."""
    already_done: int = 0
    already_failed: int = 0
    """Failed records kept from earlier runs (``--retry-failed`` sends them again)."""
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_by_model: dict[str, float] = Field(default_factory=dict)
    unpriced: int = 0
    budget_usd: float | None = None
    spent_before_usd: float = 0.0
    """What the records kept from earlier runs cost; a budget covers them too."""
    wall_s: float = 0.0
    interrupted: bool = False
    """Stopped before the end, by Ctrl-C or ``--deadline``."""
    deadline_reached: bool = False
    abandoned: int = 0
    """Requests still open when an interrupted run gave up waiting: sent (perhaps billed), no record."""
    resent: int = 0
    """Requests sent again because their adapter died under them: each may be billed twice."""
    rate: RateReport | None = None
    """Achieved rate against the scope's limits, and the 429s (when the run got that far)."""

    def add_result(self, result: TaskResult) -> None:
        if result.status is TaskStatus.COMPLETED:
            self.succeeded += 1
        else:
            _bump(self.failed, result.error.code if result.error else result.status.value)
        self.retries += max(result.attempts - 1, 0)
        self.prompt_tokens += result.usage.prompt_tokens
        self.completion_tokens += result.usage.completion_tokens
        if result.cost_usd is None:
            self.unpriced += 1
        else:
            self.cost_by_model[result.model] = self.cost_by_model.get(result.model, 0.0) + result.cost_usd

    def add_problem(self, code: str) -> None:
        _bump(self.invalid, code)

    def add_not_run(self, code: str) -> None:
        _bump(self.not_run, code)

    @property
    def written(self) -> int:
        """Records this run appended to the output."""
        return self.succeeded + sum(self.failed.values()) + sum(self.invalid.values()) + sum(self.not_run.values())

    @property
    def cost_usd(self) -> float:
        return sum(self.cost_by_model.values())

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.DEADLINE if self.deadline_reached else ExitCode.INTERRUPTED
        all_ok = self.written == self.succeeded and self.already_failed == 0
        return ExitCode.OK if all_ok else ExitCode.SOME_FAILED

    def outcome_lines(self) -> list[str]:
        """Records by outcome, and by code where some did not succeed (``rayfan report`` too)."""
        lines = [
            f"requests: {self.succeeded} succeeded, {sum(self.failed.values())} failed,"
            f" {sum(self.invalid.values())} invalid lines, {sum(self.not_run.values())} not run"
        ]
        for label, counts in (("failed", self.failed), ("invalid", self.invalid), ("not run", self.not_run)):
            if counts:
                lines.append(f"  {label}: {_breakdown(counts)}")
        return lines

    def usage_lines(self) -> list[str]:
        """Tokens, retries and cost by model (``rayfan report`` too)."""
        unpriced = f" ({self.unpriced} results with no known price)" if self.unpriced else ""
        return [
            f"tokens: {self.prompt_tokens} in, {self.completion_tokens} out; {self.retries} retries",
            f"cost: ${self.cost_usd:.6f}{unpriced}",
            *(f"  {model}: ${cost:.6f}" for model, cost in sorted(self.cost_by_model.items())),
        ]

    def render(self) -> str:
        lines = self.outcome_lines()
        lines[0] += f" ({self.already_done} already done before this run)"
        if self.already_failed:
            lines.append(f"  {self.already_failed} failed records from earlier runs kept: --retry-failed sends them again")
        lines += self.usage_lines()
        if self.budget_usd is not None:
            lines.append(self._render_budget(self.budget_usd))
        lines.append(f"wall time: {self.wall_s:.2f}s")
        if self.rate is not None:
            lines.append(self.rate.render())
        if self.resent:
            lines.append(f"resent: {self.resent} requests whose adapter died went out again (each may be billed twice)")
        if self.abandoned:
            lines.append(
                f"abandoned: {self.abandoned} requests still open at the endpoint when the run stopped"
                " (sent, perhaps billed, no record): the same command sends them again"
            )
        if self.interrupted:
            why = "deadline reached" if self.deadline_reached else "interrupted"
            lines.append(f"{why}: run the same command again to resume into {self.output}")
        return "\n".join(lines)

    def _render_budget(self, budget_usd: float) -> str:
        line = f"budget: ${self.spent_before_usd + self.cost_usd:.6f} of ${budget_usd:.6f} spent"
        if self.spent_before_usd:
            line += f" (${self.spent_before_usd:.6f} by earlier runs)"
        if BUDGET_EXHAUSTED in self.not_run:
            line += "; rerun with a larger --budget-usd to send the rest"
        return line
