"""Cost before anything is sent: one request's range for ``--budget-usd`` reservations, and
the whole file's for ``--dry-run``.

A request costs at least its prompt at the input price (no cache hits, no output) and at
most its prompt plus every output token it allows at the output price. A model missing
from the price table has no range: it is reported apart, never counted as free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from actors.accounting.pricing import PriceTable
from actors.accounting.tokens import BYTES_PER_TOKEN_ESTIMATE, is_exact, output_allowance, prompt_tokens
from actors.models import AnyTask
from drivers.inputs import InputProblem, RequestDefaults, read_requests
from drivers.outputs import ResumeState


@dataclass(frozen=True)
class RequestEstimate:
    model: str
    prompt_tokens: int
    output_tokens: int
    low_usd: float | None
    high_usd: float | None
    """The worst case: what a budget reserves. None when the model has no known price."""


def estimate_request(task: AnyTask, prices: PriceTable) -> RequestEstimate:
    prompt, output = prompt_tokens(task), output_allowance(task)
    price = prices.lookup(task.model)
    if price is None:
        return RequestEstimate(task.model, prompt, output, None, None)
    return RequestEstimate(task.model, prompt, output, price.worst_case(prompt, 0), price.worst_case(prompt, output))


class ModelTotals(BaseModel):
    requests: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    low_usd: float = 0.0
    high_usd: float = 0.0

    def add(self, estimate: RequestEstimate) -> None:
        self.requests += 1
        self.prompt_tokens += estimate.prompt_tokens
        self.output_tokens += estimate.output_tokens
        self.low_usd += estimate.low_usd or 0.0
        self.high_usd += estimate.high_usd or 0.0


class FileEstimate(BaseModel):
    """``--dry-run``'s report: the cost range by model, and what could not be priced."""

    path: Path
    priced: dict[str, ModelTotals] = Field(default_factory=dict)
    unpriced: dict[str, ModelTotals] = Field(default_factory=dict)
    invalid: int = 0
    already_done: int = 0
    """Requests and bad lines the output already has a record for: a re-run skips them."""

    def add(self, estimate: RequestEstimate) -> None:
        by_model = self.unpriced if estimate.high_usd is None else self.priced
        by_model.setdefault(estimate.model, ModelTotals()).add(estimate)

    @property
    def low_usd(self) -> float:
        return sum(totals.low_usd for totals in self.priced.values())

    @property
    def high_usd(self) -> float:
        return sum(totals.high_usd for totals in self.priced.values())

    def render(self) -> str:
        requests = sum(t.requests for t in (*self.priced.values(), *self.unpriced.values()))
        done = f" ({self.already_done} lines already done in the output, not counted)" if self.already_done else ""
        lines = [f"dry run of {self.path}: {requests} requests to send, {self.invalid} invalid lines{done}; nothing was sent"]
        for model, totals in sorted(self.priced.items()):
            lines.append(
                f"  {model}: {totals.requests} requests, {totals.prompt_tokens} prompt tokens,"
                f" up to {totals.output_tokens} output tokens: ${totals.low_usd:.6f} to ${totals.high_usd:.6f}"
            )
        lines.append(f"estimated cost: ${self.low_usd:.6f} to ${self.high_usd:.6f}")
        if self.unpriced:
            missing = ", ".join(f"{model} ({t.requests} requests)" for model, t in sorted(self.unpriced.items()))
            lines.append(f"no known price, not in the estimate: {missing}")
        counted = "counted with tiktoken" if is_exact() else f"estimated at one per {BYTES_PER_TOKEN_ESTIMATE} bytes"
        lines.append(f"prompt tokens {counted}; output at each request's max tokens (or the default allowance)")
        return "\n".join(lines)


def estimate_file(path: Path, defaults: RequestDefaults, prices: PriceTable, done: ResumeState | None = None) -> FileEstimate:
    """Read the whole file as a stream and add up the range of every valid request that a
    run would send: those ``done`` (an existing output's records) holds are skipped."""
    report = FileEstimate(path=path)
    for item in read_requests(path, defaults):
        if done is not None and done.is_done(item):
            report.already_done += 1
        elif isinstance(item, InputProblem):
            report.invalid += 1
        else:
            report.add(estimate_request(item.task, prices))
    return report
