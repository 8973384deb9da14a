"""``--sort``: rewrite the output in input-line order, in bounded memory, atomically.

Records are sorted in runs of ``chunk_records`` lines, each run spilled to a scratch file
beside the output, and the runs merged into the new file; so a million-record output
never has to fit in memory, and a kill mid-sort leaves the unsorted file intact.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import tempfile
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import IO

from drivers.outputs import atomic_rewrite

CHUNK_RECORDS = 100_000


def sort_by_line(path: Path, *, chunk_records: int = CHUNK_RECORDS) -> None:
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.sort-") as scratch:
        runs = _write_sorted_runs(path, Path(scratch), chunk_records)
        with contextlib.ExitStack() as stack:
            readers = [_keyed(stack.enter_context(open(run, "rb"))) for run in runs]
            with atomic_rewrite(path) as out:
                out.writelines(record for _, record in heapq.merge(*readers))


def _write_sorted_runs(path: Path, scratch: Path, chunk_records: int) -> list[Path]:
    """Each run file holds ``line<TAB>record`` lines in line order."""
    runs: list[Path] = []
    with open(path, "rb") as records:
        while chunk := list(islice(records, chunk_records)):
            run = scratch / f"run{len(runs)}"
            with open(run, "wb") as out:
                keyed = sorted((json.loads(record)["rayfan"]["line"], record) for record in chunk)
                out.writelines(b"%d\t%s" % (line, record) for line, record in keyed)
            runs.append(run)
    return runs


def _keyed(run: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for text in run:
        line, _, record = text.partition(b"\t")
        yield int(line), record
