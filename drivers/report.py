"""``rayfan report OUT.jsonl``: what an output file holds, finished or half-finished.

It reads the file as it is, with no Ray session and without repairing it (``rayfan run``
does that on resume), in one streamed pass whose memory does not grow with the file: the
counts are those of the run's own summary (a ``RunSummary`` is fed the same results), and
latency percentiles come from a bounded sample. The lines resume would not keep (a torn
last line, lines that are not records) are counted and named, never fatal.
"""

from __future__ import annotations

import math
import random
import sys
from array import array
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from actors.errors import TaskError
from actors.models import TaskResult, TaskStatus
from drivers.outputs import NOT_RUN_STATUS, parse_record
from drivers.summary import ExitCode, RunSummary

SAMPLE_SIZE = 100_000
"""Latencies kept for the percentiles: up to this many they are exact; beyond, a uniform
sample this large puts p99 within about ±0.03 percentile points (one standard error; p50
±0.16), in 800 kB, however long the file."""
PERCENTILES = (50, 90, 99)
MINUTES_WITH_EDGES = 240
"""Up to this span the chart outlines each minute's bar; past it the outline would hide thin bars."""
MINUTE_TICKS = 15
"""Up to this span the chart labels every minute."""
INSTALL_PLOT = "pip install 'rayfan[plot]' (or: pip install matplotlib)"


class LatencyStats(BaseModel):
    """Each record's ``latency_s``: from the request taking one of its adapter's in-flight slots
    to its result, so rate-limit waits, retries and backoff are in it (a run held at its
    ``--rpm`` shows long latencies from a fast server). Over the requests that were sent,
    succeeded or failed; those refused before any attempt have no latency to count."""

    requests: int = 0
    sampled: int = 0
    """How many latencies the percentiles were read from: all of them while ``exact``."""
    percentiles_s: dict[int, float] = Field(default_factory=dict)
    """Nearest-rank percentiles: each is a latency that occurred."""
    max_s: float | None = None
    """Exact, whatever the sample."""

    @property
    def exact(self) -> bool:
        return self.sampled == self.requests


class Report(BaseModel):
    """An output file's contents, counted as ``rayfan run``'s summary counts them."""

    path: Path
    records: int = 0
    counts: RunSummary = Field(default_factory=RunSummary)
    """The records counted as ``rayfan run`` counts its results (outcomes by code, tokens, cost)."""
    latency: LatencyStats = Field(default_factory=LatencyStats)
    per_minute: dict[int, int] = Field(default_factory=dict)
    """Successful responses by the minute (Unix time // 60) the server created them."""
    timed: int = 0
    """Successful responses whose body carries the server's ``created`` time."""
    first_created: float | None = None
    last_created: float | None = None
    not_records: int = 0
    """Complete lines that are not records (resume drops them and sends those requests again)."""
    foreign: int = 0
    """Records without rayfan's fields: resume keeps them as done, the counts above skip them."""
    torn_bytes: int = 0
    """Length of a last line with no newline (a kill mid-write), 0 if the file ends cleanly."""

    @property
    def succeeded(self) -> int:
        return self.counts.succeeded

    @property
    def failed(self) -> dict[str, int]:
        return self.counts.failed

    @property
    def invalid(self) -> dict[str, int]:
        return self.counts.invalid

    @property
    def not_run(self) -> dict[str, int]:
        return self.counts.not_run

    @property
    def retries(self) -> int:
        return self.counts.retries

    @property
    def prompt_tokens(self) -> int:
        return self.counts.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self.counts.completion_tokens

    @property
    def cost_by_model(self) -> dict[str, float]:
        return self.counts.cost_by_model

    @property
    def unpriced(self) -> int:
        return self.counts.unpriced

    def render(self) -> str:
        """The same lines, in the same words, as the end of ``rayfan run``, plus what only a file tells."""
        lines = [f"{self.path}: {self.records} records", *self.counts.outcome_lines(), *self.counts.usage_lines()]
        lines.append(self._render_latency())
        if self.per_minute:
            lines.append(self._render_rate())
        if self.foreign:
            lines.append(f"{self.foreign} records without rayfan's fields: not counted above")
        if self.not_records:
            lines.append(f"{self.not_records} lines are not records: not counted; the next `rayfan run` drops them and sends those requests again")
        if self.torn_bytes:
            lines.append(
                f"torn last line: {self.torn_bytes} bytes with no newline (a kill mid-write, or a run still writing): not counted;"
                " the next `rayfan run` cuts it off and sends that request again"
            )
        return "\n".join(lines)

    def _render_latency(self) -> str:
        stats = self.latency
        if not stats.requests or stats.max_s is None:
            return "latency: no request was sent"
        how = "exact" if stats.exact else f"from a uniform sample of {stats.sampled} of them"
        values = ", ".join(f"p{p} {seconds:.3f}s" for p, seconds in sorted(stats.percentiles_s.items()))
        return f"latency of {stats.requests} sent requests (slot to result, rate-limit waits and retries included; {how}): {values}, max {stats.max_s:.3f}s"

    def _render_rate(self) -> str:
        first, last = self.first_created or 0.0, self.last_created or 0.0
        # over the span the server's times cover, but at least a minute: 40 answers within
        # one second are 40 in that minute, not 2,400 a minute
        mean = self.timed * 60 / max(last - first, 60.0)
        peak_minute, peak = max(self.per_minute.items(), key=lambda item: (item[1], -item[0]))
        return (
            f"responses per minute by the server's clock ({self.timed} of {self.succeeded} successes carry its time):"
            f" mean {mean:.1f} from {_utc_seconds(first):%Y-%m-%d %H:%M:%S} to {_utc_seconds(last):%H:%M:%S} UTC,"
            f" busiest minute {peak} at {_utc(peak_minute):%H:%M}"
        )


class _Reservoir:
    """A uniform random sample of at most ``size`` values (Vitter's algorithm R), seeded, so
    the same file always gives the same percentiles; exact while the values fit."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self._size = size
        self._values = array("d")
        self._seen = 0
        self._max = -math.inf
        self._random = random.Random(seed)

    def add(self, value: float) -> None:
        self._seen += 1
        self._max = max(self._max, value)
        if len(self._values) < self._size:
            self._values.append(value)
        elif (slot := self._random.randrange(self._seen)) < self._size:
            self._values[slot] = value

    def stats(self) -> LatencyStats:
        if not self._seen:
            return LatencyStats()
        ordered = sorted(self._values)
        n = len(ordered)
        # nearest rank, ceil(p * n / 100) in integers: 90 * 10 / 100 in floats is 9.000000000000002
        percentiles = {p: ordered[max(-(-p * n // 100), 1) - 1] for p in PERCENTILES}
        return LatencyStats(requests=self._seen, sampled=n, percentiles_s=percentiles, max_s=self._max)


class _Tally:
    """One pass over the file's records; the counting itself is ``RunSummary``'s."""

    def __init__(self, path: Path) -> None:
        self.report = Report(path=path)
        self.summary = RunSummary()
        self.latencies = _Reservoir(SAMPLE_SIZE)
        self.per_minute: Counter[int] = Counter()

    def add_line(self, raw: bytes) -> None:
        record = parse_record(raw)
        if record is None:
            self.report.not_records += 1
            return
        try:
            self._add(record)
        except ValidationError:  # the shape resume accepts, with fields rayfan never writes
            self.report.not_records += 1
            return
        self.report.records += 1

    def _add(self, record: dict[str, Any]) -> None:
        extra: dict[str, Any] = record.get("rayfan") or {}
        error = record.get("error")
        if extra.get("status") == NOT_RUN_STATUS:
            self.summary.add_not_run(TaskError.model_validate(error).code)
        elif "attempts" in extra:  # only outputs.result_record writes attempts: an adapter's result
            self._add_result(TaskResult.model_validate({**extra, "custom_id": record["custom_id"], "error": error}), record)
        elif error is not None:
            self.summary.add_problem(TaskError.model_validate(error).code)
        else:
            self.report.foreign += 1

    def _add_result(self, result: TaskResult, record: dict[str, Any]) -> None:
        self.summary.add_result(result)
        if result.attempts > 0:
            self.latencies.add(result.latency_s)
        if result.status is TaskStatus.COMPLETED and (created := _server_time(record)) is not None:
            self.per_minute[int(created // 60)] += 1
            self.report.timed += 1
            first, last = self.report.first_created, self.report.last_created
            self.report.first_created = created if first is None else min(first, created)
            self.report.last_created = created if last is None else max(last, created)

    def finish(self, torn_bytes: int) -> Report:
        return self.report.model_copy(
            update={"counts": self.summary, "latency": self.latencies.stats(), "per_minute": dict(self.per_minute), "torn_bytes": torn_bytes}
        )


def _server_time(record: dict[str, Any]) -> float | None:
    """When the server created the response (Unix seconds, its clock): chat completions carry
    ``created``, responses ``created_at``; embeddings and streamed chats (whose body rayfan
    synthesizes) carry neither, and records carry no time of their own."""
    response = record.get("response")
    body = response.get("body") if isinstance(response, dict) else None
    if not isinstance(body, dict):
        return None
    for key in ("created", "created_at"):
        value = body.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf:
            return float(value)
    return None


def _utc(minute: int) -> datetime:
    return _utc_seconds(minute * 60)


def _utc_seconds(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def read_report(path: Path) -> Report:
    """Count an output file in one streamed pass; OSError if it cannot be read."""
    tally = _Tally(path)
    torn_bytes = 0
    with open(path, "rb") as lines:
        for raw in lines:
            if not raw.endswith(b"\n"):
                torn_bytes = len(raw)  # only the last line can lack its newline
                break
            tally.add_line(raw)
    return tally.finish(torn_bytes)


class NothingToPlot(Exception):
    """No record carries a time to plot."""


def _matplotlib() -> tuple[Any, Any, Any]:
    """Figure, FigureCanvasAgg and matplotlib.dates; ImportError without the ``plot`` extra.

    The Agg canvas is attached to the figure directly, never through pyplot, so no global
    backend is chosen and no display is needed."""
    from matplotlib import dates  # type: ignore[import-not-found, unused-ignore]
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # type: ignore[import-not-found, unused-ignore]
    from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]

    return Figure, FigureCanvasAgg, dates


def write_plot(report: Report, png: Path, *, rpm: int | None = None) -> None:
    """Successful responses per minute (by the server's ``created`` time, the only time records
    carry) as bars, with ``rpm`` as a dashed line; raises NothingToPlot when no record has a time."""
    if not report.per_minute:
        raise NothingToPlot(
            f"no record in {report.path} carries a time to plot (only successful chat and responses"
            " bodies carry the server's created time; embeddings, streamed chats and failures do not)"
        )
    figure_class, canvas_class, dates = _matplotlib()
    figure = figure_class(figsize=(10, 4.5), dpi=100, layout="constrained")
    canvas_class(figure)
    axes = figure.add_subplot()
    minutes = sorted(report.per_minute)
    counts = [report.per_minute[minute] for minute in minutes]
    edge = 0.6 if minutes[-1] - minutes[0] < MINUTES_WITH_EDGES else 0.0  # keeps neighbours apart, until bars get thinner than it
    starts = [_utc(minute) for minute in minutes]
    axes.bar(starts, counts, width=1 / (24 * 60), align="edge", color="tab:blue", edgecolor="white", linewidth=edge, label="responses")
    if rpm is not None:
        axes.axhline(rpm, color="tab:red", linestyle="--", linewidth=1.5, label=f"--rpm {rpm}")
    axes.set_ylim(0, max(max(counts), rpm or 0) * 1.3)  # room for the legend above the rpm line
    # a tick a minute while they fit: Matplotlib's own choice would label half-minutes
    few = minutes[-1] - minutes[0] < MINUTE_TICKS
    locator = dates.MinuteLocator(tz=timezone.utc) if few else dates.AutoDateLocator(tz=timezone.utc)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(dates.ConciseDateFormatter(locator, tz=timezone.utc))
    axes.set_xlabel("minute the server created the response (UTC, server clock)")
    axes.set_ylabel("responses per minute")
    axes.set_title(f"{report.path.name}: {report.timed} successful responses per minute")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="upper right")
    untimed = report.records - report.timed
    figure.supxlabel(  # a figure label, so the constrained layout makes room for it
        f"{untimed} of {report.records} records carry no server time and are not drawn (failures, not-run and"
        " invalid lines, embeddings, streamed chats); the first and last minutes may be partial.",
        x=0.01,
        ha="left",
        fontsize=8,
        color="dimgray",
    )
    figure.savefig(png, format="png")


def _error(message: str) -> int:
    print(f"rayfan report: error: {message}", file=sys.stderr)
    return ExitCode.USAGE


def run_report(path: Path, *, plot: Path | None = None, rpm: int | None = None) -> int:
    """The ``report`` command: print the report (and write the chart); 0, or 1 with a one-line error."""
    if plot is not None:
        try:
            _matplotlib()
        except ImportError:
            return _error(f"--plot needs matplotlib: {INSTALL_PLOT}")
    try:
        report = read_report(path)
    except OSError as err:
        return _error(f"{path}: cannot read it ({err.strerror or err})")
    print(report.render())
    if plot is not None:
        try:
            write_plot(report, plot, rpm=rpm)
        except NothingToPlot as err:
            return _error(f"--plot: {err}")
        except OSError as err:
            return _error(f"--plot {plot}: cannot write it ({err.strerror or err})")
        print(f"chart: {plot}")
    return ExitCode.OK
