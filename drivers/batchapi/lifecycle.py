"""Every batch of a run, from its file to its records, followed by a coroutine of its own on
the driver's event loop: upload, submit, look until it ends, read its answers into the
output, and retire it: its unfinished requests go in a new batch (or are left for the
synchronous path, ``--batch-unfinished sync``), or after ``max_attempts`` batches become
records saying why. Meanwhile the input is read into new batch files, and each starts as
soon as it is complete.

Each step is journaled (``journal.py``) before the next begins, and the output is synced
before the journal says a batch is done, so a run killed anywhere resumes at the step it
was in: nothing is submitted twice, every request ends as one record. What the Batch API
refuses for good (a 4xx) becomes records, as the synchronous path's errors do: a rejected
key or no credit stops every later submission (not-run records, which a re-run sends). A
failure that may be passing (a 5xx, a timeout, after the adapter's retries) stops the run
instead (raised), since a batch whose create got no answer may exist: the next run looks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from ray.exceptions import RayActorError

from actors.accounting.pricing import PriceTable
from actors.errors import BatchApiError, TaskError
from drivers.batchapi.journal import OPEN_STAGES, BatchEntry, Journal, Stage
from drivers.batchapi.ledger import BatchLedger
from drivers.batchapi.merge import BatchContext, lines_of, read_answer
from drivers.batchapi.options import BatchApiOptions
from drivers.batchapi.pool import AdapterPool
from drivers.batchapi.records import Records
from drivers.batchapi.split import Splitter, left_over
from drivers.inputs import InputProblem, InputRequest
from drivers.outputs import SCOPE_STOPPED_CODES

log = logging.getLogger(__name__)

FIRST_LOOK_S = 1.0
DOWNLOAD_TRIES = 3
YIELD_EVERY = 500
"""Input lines read between two turns of the event loop, so batches already made move on."""
QUEUE_FULL = "token_limit_exceeded"
"""A batch failed because the model's queue is full: it goes again, once one of ours ends."""
_SILENT = {
    "expired": TaskError(code="batch_expired", message="its batch expired before answering it"),
    "cancelled": TaskError(code="batch_cancelled", message="its batch was cancelled before answering it"),
    "completed": TaskError(code="batch_no_answer", message="its batch completed without a line for it"),
}


class BatchRun:
    """The batches of one run; ``run`` returns once every one has ended and been collected."""

    def __init__(
        self, *, settings: BatchApiOptions, journal: Journal, pool: AdapterPool, records: Records, ledger: BatchLedger, prices: PriceTable
    ) -> None:
        self._settings = settings
        self._journal = journal
        self._pool = pool
        self._records = records
        self._summary = records.summary
        self._ledger = ledger
        self._prices = prices
        """Batch prices (``PriceTable.for_batch``)."""
        self._pending = journal.pending_ids()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ended: asyncio.Event | None = None
        self._stopped: TaskError | None = None
        """Why nothing more is submitted (a rejected key, no credit): the rest becomes not-run records."""

    async def run(self, items: Iterable[InputRequest | InputProblem]) -> None:
        try:
            for entry in self._journal.entries(*OPEN_STAGES):
                self._ledger.hold_again(entry)
                self._start(entry)
            await self._split(items)
            while self._tasks:
                done, _ = await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- reading the input into batch files

    async def _split(self, items: Iterable[InputRequest | InputProblem]) -> None:
        splitter = Splitter(self._journal, self._settings.limits, self._made)
        for count, item in enumerate(items, 1):
            self._take(item, splitter)
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)
        splitter.close()

    def _take(self, item: InputRequest | InputProblem, splitter: Splitter) -> None:
        if self._records.resume.is_done(item):
            self._summary.already_done += 1
        elif isinstance(item, InputProblem):
            self._records.problem(item)
        elif item.custom_id in self._pending:
            self._summary.already_submitted += 1
        elif self._stopped is not None:
            self._records.not_run(item, self._stopped.code, self._stopped.message)
        elif (reservation := self._ledger.reserve(item)) is not None and not splitter.add(item, *reservation):
            self._ledger.release(reservation[1])
            error = TaskError(code="batch_line_too_large", message=f"line {item.line}: beyond what one batch file may hold")
            self._records.failed(item.line, item.custom_id, item.task.model, error)

    def _made(self, entry: BatchEntry, units: int) -> None:
        """A new batch file is complete: journal it, and set it going."""
        self._journal.state.batches.append(entry)
        self._journal.save()
        self._ledger.hold(entry, units)
        self._start(entry)

    def _start(self, entry: BatchEntry) -> None:
        task = asyncio.get_running_loop().create_task(self._drive(entry), name=f"batch {entry.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- one batch

    async def _drive(self, entry: BatchEntry) -> None:
        if entry.stage is Stage.SPLIT:
            await self._upload(entry)
        if entry.stage in (Stage.UPLOADED, Stage.SUBMITTING):
            await self._submit(entry)
        if entry.stage is Stage.SUBMITTED:
            await self._wait_for_end(entry)
            await self._collect(entry)

    async def _upload(self, entry: BatchEntry) -> None:
        if self._stopped is not None:
            return self._refuse(entry, self._stopped)
        filename = f"{self._records.out.path.name}.{entry.name}.jsonl"
        try:
            entry.input_file_id = await self._pool.upload(self._journal.requests_file(entry.name), filename)
        except BatchApiError as err:
            return self._refuse_or_raise(entry, err)
        entry.stage = Stage.UPLOADED
        self._journal.save()
        self._summary.files_uploaded += 1

    async def _submit(self, entry: BatchEntry) -> None:
        assert entry.input_file_id is not None
        if entry.stage is Stage.UPLOADED:
            if self._stopped is not None:
                return self._refuse(entry, self._stopped)
            entry.stage, entry.submitting_since = Stage.SUBMITTING, int(time.time())
            self._journal.save()
        assert entry.submitting_since is not None
        metadata = {"rayfan_output": self._records.out.path.name[:512], "rayfan_batch": entry.name}
        try:
            entry.batch = await self._pool.submit(entry.input_file_id, entry.url, metadata, entry.submitting_since)
        except BatchApiError as err:
            return self._refuse_or_raise(entry, err)
        entry.stage = Stage.SUBMITTED
        self._journal.save()
        self._summary.batches_submitted += 1

    async def _wait_for_end(self, entry: BatchEntry) -> None:
        """Look at the batch, first after a second, then twice as late each time, up to ``poll_s``."""
        assert entry.batch is not None
        wait = min(FIRST_LOOK_S, self._settings.poll_s)
        while not entry.batch.ended:
            await asyncio.sleep(wait)
            wait = min(2 * wait, self._settings.poll_s)
            try:
                info = await self._pool.retrieve(entry.batch.id)
            except BatchApiError as err:
                if _refused(err.error):
                    raise  # a batch this key cannot read (another key's, or a revoked key): only a person can say
                log.warning("%s; looking again in %.0f s", err, wait)
                continue
            if info != entry.batch:
                entry.batch = info
                self._journal.save()

    async def _collect(self, entry: BatchEntry) -> None:
        """Write a record for every answer of the ended batch, then retire it."""
        info = entry.batch
        assert info is not None
        self._batch_ended()
        members = self._journal.members(entry)
        latency = float(max((info.ended_at or info.created_at) - info.created_at, 0))
        context = BatchContext(info.id, entry.url, entry.model, self._prices, entry.attempt, latency)
        heard: set[str] = set()
        unfinished: dict[str, TaskError] = {}
        cost = 0.0
        for file_id in (info.output_file_id, info.error_file_id):
            if file_id is not None:
                cost += await self._read(file_id, context, members, heard, unfinished)
        silence = info.errors[0] if info.status == "failed" and info.errors else _SILENT.get(info.status)
        silence = silence or TaskError(code="batch_failed", message=f"its batch ended {info.status}")
        for custom_id in members.keys() - heard:
            unfinished[custom_id] = silence
        unfinished = {custom_id: why for custom_id, why in unfinished.items() if not self._records.is_done(custom_id)}
        self._records.out.sync()
        self._summary.batches_ended[info.status] = self._summary.batches_ended.get(info.status, 0) + 1
        self._ledger.settle(entry, cost)
        await self._retire(entry, members, unfinished)

    async def _read(
        self, file_id: str, context: BatchContext, members: dict[str, int], heard: set[str], unfinished: dict[str, TaskError]
    ) -> float:
        """Write the results in one of the batch's files (those already in the output are
        skipped: a run killed mid-way reads the file again); their cost."""
        cost = 0.0
        for tries_left in reversed(range(DOWNLOAD_TRIES)):
            try:
                async for raw in lines_of(self._pool.download(file_id)):
                    answer = read_answer(raw, context)
                    if answer is None or answer.custom_id not in members:
                        continue
                    heard.add(answer.custom_id)
                    if answer.result is None:
                        unfinished[answer.custom_id] = answer.unfinished or _SILENT["completed"]
                    elif not self._records.is_done(answer.custom_id):
                        self._records.result(members[answer.custom_id], answer.result, record_id=answer.record_id, batch_id=context.batch_id)
                        cost += answer.result.cost_usd or 0.0
                return cost
            except (BatchApiError, RayActorError) as err:
                if not tries_left:
                    raise
                log.warning("batch %s: reading %s again from the start: %s", context.batch_id, file_id, err)
        raise AssertionError("the loop returns or raises")

    async def _retire(self, entry: BatchEntry, members: dict[str, int], unfinished: dict[str, TaskError]) -> None:
        """The batch has given all it will: done, or its unfinished requests go on."""
        if not unfinished:
            return self._done(entry)
        if self._settings.unfinished == "sync":
            entry.stage = Stage.SYNC
            self._journal.save()
            return
        attempt = entry.attempt + 1
        if any(error.code == QUEUE_FULL for error in unfinished.values()) and self._others_open(entry):
            await self._one_more_ends()
            attempt = entry.attempt  # the queue was full of our own batches: not the batch's fault
        if attempt > self._settings.max_attempts:
            for custom_id, why in unfinished.items():
                error = why.model_copy(update={"message": f"{why.message} (after {entry.attempt} batches)"})
                self._records.failed(members[custom_id], custom_id, entry.model, error, attempts=entry.attempt)
            self._records.out.sync()
            return self._done(entry)
        made: list[tuple[BatchEntry, int]] = []
        splitter = Splitter(self._journal, self._settings.limits, lambda new, units: made.append((new, units)), attempt=attempt)
        for request in left_over(self._journal, entry, set(unfinished)):
            if (reservation := self._ledger.reserve(request)) is not None:
                splitter.add(request, *reservation)
        splitter.close()
        self._records.out.sync()
        entry.stage = Stage.DONE
        self._journal.state.batches.extend(new for new, _ in made)
        self._journal.save()  # one write: the old batch retired and its successors named together
        self._journal.forget_files(entry.name)
        for new, units in made:
            self._summary.resubmitted += new.requests
            self._ledger.hold(new, units)
            self._start(new)

    def _done(self, entry: BatchEntry) -> None:
        entry.stage = Stage.DONE
        self._journal.save()
        self._journal.forget_files(entry.name)

    # -- refusals

    def _refuse_or_raise(self, entry: BatchEntry, err: BatchApiError) -> None:
        if not _refused(err.error):
            raise err
        self._refuse(entry, err.error)

    def _refuse(self, entry: BatchEntry, error: TaskError) -> None:
        """The Batch API will not take this batch: a record for each of its requests. A
        rejected key, no credit or an untrusted endpoint stop every later submission."""
        self._batch_ended()
        code, message = _refusal_record(error)
        if code in SCOPE_STOPPED_CODES:
            self._stopped = TaskError(code=code, message=message)
        todo = {custom_id for custom_id, _ in self._journal.index(entry) if not self._records.is_done(custom_id)}
        for request in left_over(self._journal, entry, todo):
            if code in SCOPE_STOPPED_CODES:
                self._records.not_run(request, code, message)
            else:
                reason = TaskError(code=code, message=message, status_code=error.status_code)
                self._records.failed(request.line, request.custom_id, entry.model, reason)
        self._records.out.sync()
        self._ledger.settle(entry)
        self._done(entry)

    # -- batches ending

    def _batch_ended(self) -> None:
        if self._ended is not None:
            self._ended.set()
        self._ended = None

    def _others_open(self, entry: BatchEntry) -> bool:
        """Another of our batches holds (or is about to hold) a place in the queue: each one
        ends in ``_collect`` or ``_refuse``, which wake the batches waiting for it."""
        return any(
            other is not entry and (other.batch is None or not other.batch.ended) for other in self._journal.entries(*OPEN_STAGES)
        )

    async def _one_more_ends(self) -> None:
        if self._ended is None:
            self._ended = asyncio.Event()
        await self._ended.wait()


def _refused(error: TaskError) -> bool:
    """The Batch API said no for good (a 4xx no wait changes, no credit, a certificate no
    retry trusts), so nothing was made: what failed is not worth trying again as it is."""
    status = error.status_code
    if error.code in ("insufficient_quota", "tls_error"):
        return True
    return status is not None and 400 <= status < 500 and status not in (408, 409, 429)


def _refusal_record(error: TaskError) -> tuple[str, str]:
    """The code and message of the records of a refused batch."""
    if error.code == "insufficient_quota":
        return "insufficient_quota", f"the Batch API answered insufficient_quota ({error.message})"
    if error.status_code in (401, 403):
        return "key_rejected", f"the Batch API rejected the key ({error.status_code}: {error.message})"
    if error.code == "tls_error":
        return "endpoint_unreachable", f"the endpoint could not be reached ({error.message})"
    return "batch_rejected", f"the Batch API refused its batch ({error.code} {error.status_code}): {error.message}"
