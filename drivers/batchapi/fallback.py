"""``--batch-unfinished sync``: what the batches left unfinished (they expired, failed or were
cancelled), sent through the synchronous path once every batch has ended: by ``run_batch``
itself, with its window, rate limits, budget, retries and Ctrl-C.

``run_batch`` reads an input file and resumes an output file, so the requests left over are
written as an input of their own (``sync.in.jsonl`` in the journal's directory, in the Batch
API form they were uploaded in) and run into ``sync.out.jsonl`` there; its records are then
appended to the output with their own input line numbers, and the batches they came from
are done. A run killed before that leaves ``sync.out.jsonl``: the next one appends it first.
"""

from __future__ import annotations

from pathlib import Path

from drivers.batch import BatchOptions, run_batch
from drivers.batchapi.journal import Journal, Stage
from drivers.batchapi.summary import BatchRunSummary
from drivers.inputs import RequestDefaults
from drivers.outputs import OutputWriter, ResumeState, parse_record

SYNC_INPUT = "sync.in.jsonl"
SYNC_OUTPUT = "sync.out.jsonl"
NOTHING_LEFT_USD = 1e-12
"""The budget of a synchronous part with none left: every request gets its budget_exhausted record."""


def recover(journal: Journal, out: OutputWriter, resume: ResumeState) -> None:
    """Append what the synchronous part of a killed run wrote and the output lacks."""
    written = journal.directory / SYNC_OUTPUT
    if written.exists():
        _append(written, out, resume, _lines(journal))
        written.unlink()


def send_left_over(
    options: BatchOptions, journal: Journal, out: OutputWriter, resume: ResumeState, summary: BatchRunSummary, spent_usd: float
) -> None:
    """Send every request of the batches left for the synchronous path that has no record."""
    requests, written = journal.directory / SYNC_INPUT, journal.directory / SYNC_OUTPUT
    lines = _lines(journal)
    left = {custom_id: line for custom_id, line in lines.items() if custom_id not in resume.done_ids}
    if left:
        with open(requests, "wb") as source:
            for entry in journal.entries(Stage.SYNC):
                with open(journal.requests_file(entry.name), "rb") as batch_file:
                    source.writelines(raw for raw, (custom_id, _) in zip(batch_file, journal.index(entry)) if custom_id in left)
        budget = None if options.budget_usd is None else max(options.budget_usd - spent_usd, NOTHING_LEFT_USD)
        sync = options.model_copy(
            update={"input": requests, "output": written, "retry_failed": False, "sort": False, "budget_usd": budget, "defaults": RequestDefaults()}
        )
        summary.sent_sync += len(left)
        summary.absorb(run_batch(sync))
        _append(written, out, resume, lines)
        written.unlink()
        requests.unlink()
    for entry in journal.entries(Stage.SYNC):
        if all(custom_id in resume.done_ids for custom_id, _ in journal.index(entry)):
            entry.stage = Stage.DONE
            journal.save()
            journal.forget_files(entry.name)


def _lines(journal: Journal) -> dict[str, int]:
    """custom_id -> input line of every request in a batch left for the synchronous path."""
    return {custom_id: line for entry in journal.entries(Stage.SYNC) for custom_id, line in journal.index(entry)}


def _append(path: Path, out: OutputWriter, resume: ResumeState, lines: dict[str, int]) -> None:
    """The records of ``path`` the output lacks, each with its request's input line."""
    with open(path, "rb") as records:
        for raw in records:
            record = parse_record(raw)
            if record is None or record["custom_id"] in resume.done_ids or record["custom_id"] not in lines:
                continue
            record["rayfan"]["line"] = lines[record["custom_id"]]
            out.write(record)
            resume.remember(record)
    out.sync()
