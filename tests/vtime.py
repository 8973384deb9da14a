"""Virtual time for asyncio tests: nothing here really sleeps.

``VirtualTimeLoop`` is a selector event loop whose ``time()`` reads a ``VirtualClock``.
Its selector never blocks: when the loop would wait for the next timer it advances the
clock by exactly that timeout instead, so timers fire "on time" instantly. Hand the same
clock to the code under test, so clock time and loop time agree. If the loop would block
with nothing scheduled (a waiter nobody will ever wake), or keeps waking far past any
test's horizon (a waiter that can never be satisfied), the selector raises instead of hanging.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
START = 1000.0  # non-zero so code that assumes the clock starts at 0 fails
MAX_VIRTUAL_S = 3600.0  # no test needs more; beyond it a wake loop is running away
MAX_JUMPS = 1000


class VirtualClock:
    """Callable clock; ``jumps`` counts how often the loop slept (to catch polling)."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self.jumps = 0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class _VirtualSelector(selectors.DefaultSelector):
    def __init__(self, clock: VirtualClock) -> None:
        super().__init__()
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)  # still serve the loop's self-pipe, without blocking
        if events or timeout == 0:
            return events
        if timeout is None:
            raise RuntimeError("deadlock: loop would block with no timer scheduled")
        self._clock.advance(timeout)
        self._clock.jumps += 1
        if self._clock.now - START > MAX_VIRTUAL_S or self._clock.jumps > MAX_JUMPS:
            raise RuntimeError("runaway: waiter never satisfied on virtual time")
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        super().__init__(_VirtualSelector(clock))

    def time(self) -> float:
        return self.clock.now


@pytest.fixture
def loop() -> Iterator[VirtualTimeLoop]:
    lp = VirtualTimeLoop(VirtualClock())
    yield lp
    lp.run_until_complete(lp.shutdown_asyncgens())
    lp.close()


@pytest.fixture
def clock(loop: VirtualTimeLoop) -> VirtualClock:
    return loop.clock


def run(loop: VirtualTimeLoop, main: Callable[[], Awaitable[T]]) -> T:
    return loop.run_until_complete(main())


def at(seconds: float) -> Any:
    return pytest.approx(seconds, abs=1e-9)
