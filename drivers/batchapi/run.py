"""One ``rayfan run --batch-api``: the same input, output, resume, budget and summary as a
synchronous run, with the requests sent as Batch API files at the batch price.

The output is read for resume as always; the journal beside it says which batches earlier
runs made (``journal.py``). The adapters only carry the Batch API's calls (files up and
down, batches submitted and read), so they are started without a rate limit; the requests
themselves are answered inside the batches. The batches are followed on an event loop
(``lifecycle.py``); what they leave for the synchronous path is sent after, by
``run_batch`` (``fallback.py``).
"""

from __future__ import annotations

import asyncio
import time

import ray
from ray.exceptions import RayActorError

from actors.errors import BatchApiError, ConfigError
from drivers.batch import BatchOptions
from drivers.batchapi.fallback import recover, send_left_over
from drivers.batchapi.journal import OPEN_STAGES, Journal, Stage
from drivers.batchapi.ledger import BatchLedger
from drivers.batchapi.lifecycle import BatchRun
from drivers.batchapi.options import BatchApiOptions
from drivers.batchapi.pool import AdapterPool
from drivers.batchapi.records import Records
from drivers.batchapi.summary import BatchRunSummary
from drivers.budget import Budget
from drivers.cluster import connect, start_adapters
from drivers.inputs import read_requests
from drivers.outputs import OutputWriter, load_resume_state
from drivers.progress import ProgressBar
from drivers.sorting import sort_by_line


def run_batch_api(options: BatchOptions, settings: BatchApiOptions, *, progress: ProgressBar | None = None) -> BatchRunSummary:
    """Collect the batches earlier runs submitted, put every request not yet answered or
    submitted into new ones, and write one record per request as they end."""
    started = time.monotonic()
    if options.endpoint.azure is not None and options.endpoint.azure.deployment is not None:
        raise ConfigError(
            "--batch-api takes each request's model as its Azure deployment: with --azure-deployment the SDK"
            " would send the files and batches calls under that deployment's path"
        )
    resume = load_resume_state(options.output, retry_failed=options.retry_failed)
    journal = Journal.open(options.output, options.endpoint.display_url)
    summary = BatchRunSummary(
        output=options.output, already_failed=resume.failed, budget_usd=options.budget_usd, spent_before_usd=resume.cost_usd
    )
    budget = Budget(options.budget_usd, spent_usd=resume.cost_usd) if options.budget_usd is not None else None
    with OutputWriter(options.output) as out:
        recover(journal, out, resume)
        journal.sweep()
        connect(options.address)
        adapters = start_adapters(
            options.adapters, endpoint=options.endpoint, model=options.model, max_in_flight=options.max_in_flight, cpus=options.adapter_cpus
        )
        try:
            records = Records(out, resume, summary, progress)
            batch_prices = options.prices.for_batch()
            ledger = BatchLedger(budget, batch_prices, records)
            pool = AdapterPool(adapters)
            batches = BatchRun(settings=settings, journal=journal, pool=pool, records=records, ledger=ledger, prices=batch_prices)
            items = read_requests(options.input, options.defaults)
            asyncio.run(asyncio.wait_for(batches.run(items), options.deadline_s))
        except KeyboardInterrupt:
            summary.interrupted = True
        except asyncio.TimeoutError:
            summary.interrupted = summary.deadline_reached = True
        except (BatchApiError, RayActorError) as err:
            summary.interrupted = True
            summary.stopped_by = str(err).strip().splitlines()[0]
        finally:
            for adapter in adapters:
                ray.kill(adapter)
        summary.open_batches = len(journal.entries(*OPEN_STAGES))
        if not summary.interrupted and journal.entries(Stage.SYNC):
            send_left_over(options, journal, out, resume, summary, budget.spent_usd if budget is not None else 0.0)
    if options.sort and not summary.interrupted:
        sort_by_line(options.output)
    summary.wall_s = time.monotonic() - started
    return summary
