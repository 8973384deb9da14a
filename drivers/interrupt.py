"""Ctrl-C that Ray's blocking calls cannot lose, raised only where the driver can stop.

A SIGINT that lands while the driver is inside ``ray.wait`` can be consumed by Ray's own
signal check and never surface as KeyboardInterrupt (seen as a run that ignored Ctrl-C and
finished); one raised anywhere else can cut the driver between taking a result and writing
its record (seen as ``internal_error`` records for requests that had succeeded). So a
press is only counted here, and the driver's loop, which waits in short slices, raises
KeyboardInterrupt at its own safe points for a press it has not acknowledged yet.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

WAIT_SLICE_S = 0.5  # how long a Ctrl-C may go unnoticed inside a blocking wait


class CtrlC:
    def __init__(self) -> None:
        self._presses = 0
        self._acknowledged = 0
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            self._installed = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._installed:
            self._installed = False
            if self._previous is not None:  # None: set outside Python, which Python cannot put back
                signal.signal(signal.SIGINT, self._previous)

    @contextlib.contextmanager
    def raising(self) -> Iterator[None]:
        """Ctrl-C raised at once, wherever it lands, for a step that holds no results to lose
        and blocks for seconds without a safe point (Ray and the adapters starting)."""
        self.raise_if_pressed()
        if not self._installed:
            yield
            return
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, self._on_sigint)

    def acknowledge(self) -> None:
        """The interruption so far is being handled; only a further press counts."""
        self._acknowledged = self._presses

    def raise_if_pressed(self) -> None:
        if self._presses > self._acknowledged:
            self.acknowledge()
            raise KeyboardInterrupt

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self._presses += 1
