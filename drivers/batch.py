"""One batch run: read, skip what is done, reserve budget, fan out, write each record as it completes."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import ray
from pydantic import BaseModel, ConfigDict, Field

from actors.accounting.pricing import PriceTable
from actors.adapter.settings import EndpointSettings
from actors.errors import TaskError
from actors.models import DEFAULT_MODEL, TaskStatus
from actors.ratelimit.limits import Limits
from actors.ratelimit.specs import CoordinatedLimitSpec
from drivers.adapter_group import AdapterGroup
from drivers.budget import Budget
from drivers.cluster import connect, joining_limit, placements, start_adapters
from drivers.endpoint import describe
from drivers.estimate import estimate_request
from drivers.fanout import Dispatcher
from drivers.inputs import InputProblem, InputRequest, RequestDefaults, read_requests
from drivers.interrupt import WAIT_SLICE_S, CtrlC
from drivers.outputs import (
    BUDGET_EXHAUSTED,
    SCOPE_STOPPED_CODES,
    UNPRICED,
    OutputWriter,
    ResumeState,
    load_resume_state,
    not_run_record,
    problem_record,
    result_record,
)
from drivers.progress import ProgressBar
from drivers.rate_report import RateReport, close_and_report
from drivers.sorting import sort_by_line
from drivers.spares import leave_spares
from drivers.summary import RunSummary

log = logging.getLogger(__name__)

DRAIN_ON_INTERRUPT_S = 10.0


class DeadlineReached(Exception):
    """The run's ``deadline_s`` passed: it stops as on Ctrl-C."""


class BatchOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    input: Path
    output: Path
    endpoint: EndpointSettings
    """Resolved on the driver (``drivers.endpoint.resolve_endpoint``)."""
    model: str = DEFAULT_MODEL
    adapters: int = Field(default=2, ge=1)
    adapter_cpus: float = Field(default=0.0, ge=0)
    """CPUs each adapter holds (``start_adapters(cpus=...)``): on an autoscaling cluster, room the autoscaler adds nodes for."""
    spares: bool = True
    """On a Ray that outlives the run, take spare adapters and leave some (``drivers.spares``)."""
    max_in_flight: int = Field(default=256, ge=1)
    address: str | None = None
    retry_failed: bool = False
    budget_usd: float | None = Field(default=None, gt=0)
    """Covers the records already in the output too, so a resumed run cannot spend it twice."""
    sort: bool = False
    defaults: RequestDefaults = Field(default_factory=RequestDefaults)
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)
    """Rate limits of the key for this model; what is not given is learned from the server's headers."""
    prices: PriceTable = Field(default_factory=PriceTable.default)
    """Prices for costs and the budget's worst cases: the shipped table, or one with the user's overrides."""
    deadline_s: float | None = Field(default=None, gt=0)
    """Stop sending this long after sending began, as on Ctrl-C: a request waiting out 429s
    waits for nothing else, so this is what bounds a run against a scope that never recovers."""


def run_batch(options: BatchOptions, *, progress: ProgressBar | None = None) -> RunSummary:
    """Send every request not already in the output file and append one record for each."""
    started = time.monotonic()
    resume = load_resume_state(options.output, retry_failed=options.retry_failed)
    summary = RunSummary(
        output=options.output,
        already_failed=resume.failed,
        budget_usd=options.budget_usd,
        spent_before_usd=resume.cost_usd,
    )
    budget = Budget(options.budget_usd, spent_usd=resume.cost_usd) if options.budget_usd is not None else None
    log.info("%s", describe(options.endpoint))
    if resume.done_ids or resume.redone or resume.torn:
        log.info(
            "resume: %s holds %d records done (%d failed, $%.6f); %d to send again%s",
            options.output, len(resume.done_ids), resume.failed, resume.cost_usd, resume.redone, "; a torn last line was cut" if resume.torn else "",
        )
    senders = _Senders(options)
    try:
        with OutputWriter(options.output) as out, CtrlC() as ctrl_c:
            run = _Run(senders, out, summary, budget, options.prices, progress, ctrl_c, options.deadline_s)
            try:
                run.send_all(read_requests(options.input, options.defaults), resume)
            except (KeyboardInterrupt, DeadlineReached) as stop:
                ctrl_c.acknowledge()
                summary.interrupted = True
                summary.deadline_reached = isinstance(stop, DeadlineReached)
                run.drain(deadline=time.monotonic() + DRAIN_ON_INTERRUPT_S)
            summary.resent = senders.resent
        summary.rate = senders.close_and_report()
    finally:
        senders.kill()
    if options.sort and not summary.interrupted:
        sort_by_line(options.output)
    summary.wall_s = time.monotonic() - started
    return summary


class _Senders:
    """Ray, the scope's coordinator and the adapters, started when the run has its first
    request to send: a re-run of a finished output, or one left only bad lines or requests
    the budget cannot cover, writes its records without waiting seconds for them."""

    def __init__(self, options: BatchOptions) -> None:
        self._options = options
        self._adapters: AdapterGroup | None = None
        self._limit: CoordinatedLimitSpec | None = None
        self._sending_since = 0.0
        self._outlives_us = False
        """Whether the joined Ray outlives this run (and spares are wanted): then spare adapters wait on it between runs."""
        self.dispatcher: Dispatcher[_Sent] | None = None

    def start(self) -> Dispatcher[_Sent]:
        options = self._options
        self._outlives_us = connect(options.address) and options.spares
        limit, join = joining_limit(options.adapters, endpoint=options.endpoint, model=options.model, limits=Limits(rpm=options.rpm, tpm=options.tpm))
        self._adapters = start_adapters(
            options.adapters,
            endpoint=options.endpoint,
            model=options.model,
            limit=limit,
            prices=options.prices,
            max_in_flight=options.max_in_flight,
            cpus=options.adapter_cpus,
            spares=self._outlives_us,
        )
        self._limit = limit.joined(join)  # the coordinator started with the adapters
        self._sending_since = time.monotonic()
        self.dispatcher = Dispatcher(self._adapters, max_in_flight=options.max_in_flight)
        return self.dispatcher

    @property
    def in_flight(self) -> int:
        return 0 if self.dispatcher is None else self.dispatcher.in_flight

    @property
    def resent(self) -> int:
        return 0 if self.dispatcher is None else self.dispatcher.resent

    def close_and_report(self) -> RateReport | None:
        """The adapters closed and their counts summed; None if the run sent nothing. On a Ray
        that outlives the run, spares are left for the next one (``drivers.spares``)."""
        if self._adapters is None or self._limit is None:
            return None
        report = close_and_report(self._adapters, self._limit, time.monotonic() - self._sending_since)
        if self._outlives_us and not self._options.adapter_cpus:
            leave_spares(placements(len(self._adapters)))
        return report

    def kill(self) -> None:
        """The adapters ended: those the run started would end with its driver, the spares it took would not."""
        for adapter in self._adapters or []:
            ray.kill(adapter)


@dataclass(frozen=True)
class _Sent:
    request: InputRequest
    reservation: int
    """Budget held until the result settles it (0 without a budget)."""


class _Run:
    """The send and collect loop of one run: every input item ends as exactly one record."""

    def __init__(
        self,
        senders: _Senders,
        out: OutputWriter,
        summary: RunSummary,
        budget: Budget | None,
        prices: PriceTable,
        progress: ProgressBar | None,
        ctrl_c: CtrlC,
        deadline_s: float | None = None,
    ) -> None:
        self._senders = senders
        self._ctrl_c = ctrl_c
        self._deadline_s = deadline_s
        self._deadline: float | None = None
        """``deadline_s`` after the adapters are up."""
        self._out = out
        self._summary = summary
        self._budget = budget
        self._prices = prices
        self._progress = progress
        self._stopped: TaskError | None = None
        """Why the scope stopped sending (no credit, a rejected key): the rest is not sent."""

    def send_all(self, items: Iterable[InputRequest | InputProblem], resume: ResumeState) -> None:
        self._show()
        for item in items:
            self._ctrl_c.raise_if_pressed()  # a resumed run may skip a million done lines without collecting
            if resume.is_done(item):
                self._summary.already_done += 1
                self._show()
            elif isinstance(item, InputProblem):
                self._summary.add_problem(item.code)
                self._write(problem_record(item))
            else:
                self._send(item)
        if (dispatcher := self._senders.dispatcher) is not None:
            dispatcher.input_done()
            while dispatcher.in_flight:
                self._collect()

    def drain(self, *, deadline: float) -> None:
        """After Ctrl-C: nothing more is sent, not even what waits in the adapters' queues;
        keep what finishes before the deadline (or a second Ctrl-C). The rest is sent again
        by the next run, and counted in the summary as abandoned."""
        dispatcher = self._senders.dispatcher
        if dispatcher is None:
            return
        try:
            dispatcher.cancel_waiting()
            while dispatcher.in_flight and (remaining := deadline - time.monotonic()) > 0:
                self._collect(timeout=remaining)
        except KeyboardInterrupt:
            pass
        self._summary.abandoned = dispatcher.in_flight

    def _send(self, request: InputRequest) -> None:
        self._check_deadline()
        if self._stopped is not None:
            self._not_run(request, self._stopped.code, f"not sent: {self._stopped.message}; a re-run sends it")
            return
        reservation: int | None = 0
        if self._budget is not None:
            reservation = self._reserve(request, self._budget)
            if reservation is None:
                return
        dispatcher = self._dispatcher()
        dispatcher.send(_Sent(request, reservation or 0), request.task)
        while not dispatcher.has_room:
            self._collect()

    def _dispatcher(self) -> Dispatcher[_Sent]:
        """The run's dispatcher, its adapters started on the first request to send. Ctrl-C
        while they start (seconds, Ray's own start included) stops the run at once."""
        if self._senders.dispatcher is not None:
            return self._senders.dispatcher
        with self._ctrl_c.raising():
            dispatcher = self._senders.start()
        if self._deadline_s is not None:
            self._deadline = time.monotonic() + self._deadline_s
        return dispatcher

    def _reserve(self, request: InputRequest, budget: Budget) -> int | None:
        """Hold the request's worst case, waiting for requests in flight to settle while
        that may make room; None (and a not-run record) when it can never fit."""
        if budget.closed:
            self._not_run(request, BUDGET_EXHAUSTED, "not sent: --budget-usd was used up before it")
            return None
        worst = estimate_request(request.task, self._prices).high_usd
        if worst is None:
            self._not_run(request, UNPRICED, f"not sent: no price for model {request.task.model!r}, so --budget-usd cannot bound it")
            return None
        while (reservation := budget.try_reserve(worst)) is None:
            if not self._senders.in_flight:
                budget.close()
                self._not_run(request, BUDGET_EXHAUSTED, f"not sent: its worst case ${worst:.6f} does not fit in the budget left")
                return None
            self._collect()
        return reservation

    def _collect(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` (None: until something finishes) in short slices, so a
        Ctrl-C is noticed even if Ray swallowed its KeyboardInterrupt."""
        dispatcher = self._senders.dispatcher
        assert dispatcher is not None, "collecting only with requests in flight"
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._ctrl_c.raise_if_pressed()  # before taking results, never between taking and writing them
            wait_s = WAIT_SLICE_S if deadline is None else max(min(WAIT_SLICE_S, deadline - time.monotonic()), 0.0)
            finished = dispatcher.collect(timeout=wait_s)
            if not finished:
                self._check_deadline()
            if finished or (deadline is not None and time.monotonic() >= deadline):
                break
        for sent, result in finished:
            if self._budget is not None:
                self._budget.settle(sent.reservation, result.cost_usd)
            if result.status is TaskStatus.CANCELLED:
                continue  # never sent (Ctrl-C emptied the queues): no record, so the next run sends it
            if result.error is not None and result.error.code in SCOPE_STOPPED_CODES:
                self._stopped = result.error
                if result.attempts == 0:
                    self._not_run(sent.request, result.error.code, f"not sent: {result.error.message}; a re-run sends it")
                    continue
            self._summary.add_result(result)
            self._write(result_record(sent.request, result))

    def _check_deadline(self) -> None:
        """Raise once the run's deadline has passed (not while draining: that has its own)."""
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._deadline = None
            raise DeadlineReached

    def _not_run(self, request: InputRequest, code: str, message: str) -> None:
        self._summary.add_not_run(code)
        self._write(not_run_record(request, code, message))

    def _write(self, record: dict[str, object]) -> None:
        self._out.write(record)
        self._show()

    def _show(self) -> None:
        if self._progress is not None:
            self._progress.update(self._summary)
