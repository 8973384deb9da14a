"""Garbage-collector settings for a process that keeps a thousand requests open.

Python's default collector runs a young-generation pass every 700 allocations and full
passes over everything imported (Ray, openai, pydantic). With ~1,000 requests open that
took a fifth of an adapter's CPU in Ray and a third in one plain process (bench/README.md).
Freezing what exists at start-up keeps it out of every pass; a larger young generation
makes passes rarer. Cycles are still collected, only less often.
"""

from __future__ import annotations

import gc

GC_YOUNG_THRESHOLD = 10_000  # allocations between young-generation collections (Python's default: 700)


def tune_for_many_open_requests() -> None:
    """Call once, early, in a process of its own (an adapter actor, the fake server's process)."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
