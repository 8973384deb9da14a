"""A one-line progress bar on stderr, drawn from the run's summary.

The summary owns the counts; the bar only draws them, at most every ``interval_s`` so a
fast run does not spend its time on the terminal. Twenty lines instead of a dependency.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from drivers.summary import RunSummary

WIDTH = 24


class ProgressBar:
    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        interval_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self._stream = stream or sys.stderr  # looked up now: tests and tools swap sys.stderr
        self._interval_s = interval_s
        self._clock = clock
        self._started: float | None = None  # the first draw: rates leave out Ray's start-up
        self._drawn_at = -interval_s

    def update(self, summary: RunSummary) -> None:
        now = self._clock()
        if self._started is None or now - self._drawn_at >= self._interval_s:
            self._draw(summary, now)

    def close(self, summary: RunSummary) -> None:
        """Draw the final state and end the line, so the summary starts on its own."""
        self._draw(summary, self._clock())
        self._stream.write("\n")
        self._stream.flush()

    def _draw(self, summary: RunSummary, now: float) -> None:
        if self._started is None:
            self._started = now
        self._drawn_at = now
        self._stream.write("\r" + render(summary, self.total, now - self._started))
        self._stream.flush()


def render(summary: RunSummary, total: int, elapsed_s: float) -> str:
    done = summary.already_done + summary.written
    filled = WIDTH * done // total if total else WIDTH
    per_s = 1 / elapsed_s if elapsed_s > 0 else 0.0
    tokens = summary.prompt_tokens + summary.completion_tokens
    minutes, seconds = divmod(int(elapsed_s), 60)
    return (
        f"[{'#' * filled}{'.' * (WIDTH - filled)}] {done}/{total}"
        f" | {summary.written * per_s:.1f} req/s | {tokens * per_s:.0f} tok/s"
        f" | ${summary.cost_usd:.4f} | {summary.retries} retries | {minutes}:{seconds:02d}"
    )
