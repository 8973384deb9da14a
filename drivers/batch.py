"""One batch run: read, skip what is done, fan out, write each record as it completes."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import ray
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from actors.models import DEFAULT_MODEL, TaskResult, TaskStatus
from drivers.cluster import connect, start_adapters
from drivers.fanout import Dispatcher
from drivers.inputs import InputProblem, InputRequest, RequestDefaults, read_requests
from drivers.outputs import OutputWriter, load_resume_state, problem_record, result_record

EXIT_OK = 0
EXIT_SOME_FAILED = 2
EXIT_INTERRUPTED = 130
DRAIN_ON_INTERRUPT_S = 10.0


class BatchOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    input: Path
    output: Path
    base_url: str | None = None
    api_key: SecretStr | None = None
    model: str = DEFAULT_MODEL
    adapters: int = Field(default=2, ge=1)
    max_in_flight: int = Field(default=256, ge=1)
    address: str | None = None
    retry_failed: bool = False
    defaults: RequestDefaults = Field(default_factory=RequestDefaults)


class RunSummary(BaseModel):
    """Totals of one run, printed at the end; records skipped as already done are counted apart."""

    succeeded: int = 0
    failed: int = 0
    invalid: int = 0
    already_done: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cost_by_model: dict[str, float] = Field(default_factory=lambda: defaultdict(float))
    unpriced: int = 0
    wall_s: float = 0.0
    interrupted: bool = False
    output: Path | None = None

    def add(self, result: TaskResult) -> None:
        if result.status is TaskStatus.COMPLETED:
            self.succeeded += 1
        else:
            self.failed += 1
        self.prompt_tokens += result.usage.prompt_tokens
        self.completion_tokens += result.usage.completion_tokens
        if result.cost_usd is None:
            self.unpriced += 1
        else:
            self.cost_usd += result.cost_usd
            self.cost_by_model[result.model] += result.cost_usd

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK if self.failed == 0 and self.invalid == 0 else EXIT_SOME_FAILED

    def render(self) -> str:
        lines = [
            f"requests: {self.succeeded} succeeded, {self.failed} failed, {self.invalid} invalid lines"
            f" ({self.already_done} already done before this run)",
            f"tokens: {self.prompt_tokens} in, {self.completion_tokens} out",
            f"cost: ${self.cost_usd:.6f}" + (f" ({self.unpriced} results with no known price)" if self.unpriced else ""),
        ]
        lines += [f"  {model}: ${cost:.6f}" for model, cost in sorted(self.cost_by_model.items())]
        lines.append(f"wall time: {self.wall_s:.2f}s")
        if self.interrupted:
            lines.append(f"interrupted: run the same command again to resume into {self.output}")
        return "\n".join(lines)


def run_batch(options: BatchOptions) -> RunSummary:
    """Send every request not already in the output file and append one record for each."""
    started = time.monotonic()
    summary = RunSummary(output=options.output)
    resume = load_resume_state(options.output, retry_failed=options.retry_failed)
    connect(options.address)
    adapters = start_adapters(
        options.adapters,
        base_url=options.base_url,
        api_key=options.api_key.get_secret_value() if options.api_key else None,
        model=options.model,
    )
    dispatcher: Dispatcher[InputRequest] = Dispatcher(adapters, max_in_flight=options.max_in_flight)
    try:
        with OutputWriter(options.output) as out:
            try:
                _send_all(options, resume, dispatcher, out, summary)
                while dispatcher.in_flight:
                    _write_ready(dispatcher, out, summary)
            except KeyboardInterrupt:
                summary.interrupted = True
                _drain(dispatcher, out, summary, deadline=time.monotonic() + DRAIN_ON_INTERRUPT_S)
    finally:
        for adapter in adapters:
            ray.kill(adapter)
    summary.wall_s = time.monotonic() - started
    return summary


def _send_all(options: BatchOptions, resume, dispatcher: Dispatcher[InputRequest], out: OutputWriter, summary: RunSummary) -> None:
    for item in read_requests(options.input, options.defaults):
        if resume.is_done(item):
            summary.already_done += 1
        elif isinstance(item, InputProblem):
            out.write(problem_record(item))
            summary.invalid += 1
        else:
            dispatcher.send(item, item.task)
            while not dispatcher.has_room:
                _write_ready(dispatcher, out, summary)


def _write_ready(dispatcher: Dispatcher[InputRequest], out: OutputWriter, summary: RunSummary, timeout: float | None = None) -> None:
    for request, result in dispatcher.collect(timeout=timeout):
        out.write(result_record(request, result))
        summary.add(result)


def _drain(dispatcher: Dispatcher[InputRequest], out: OutputWriter, summary: RunSummary, *, deadline: float) -> None:
    """After Ctrl-C: keep what finishes before the deadline; the rest resumes next run."""
    while dispatcher.in_flight and (remaining := deadline - time.monotonic()) > 0:
        _write_ready(dispatcher, out, summary, timeout=remaining)
