"""``rayfan run --batch-api``: the requests go as OpenAI Batch API files, at the batch price.

    split (input → batch files) → lifecycle (upload, submit, look, collect, retire; one
    coroutine per batch) → merge (an answer line → a result) → the output, as a synchronous
    run writes it; journal (state.json beside the output: resume without paying twice);
    pool (the adapters, which make the calls); fallback (what batches left unfinished, sent
    synchronously); summary (the run's counts and its batches); options (the flags).
"""

from drivers.batchapi.journal import Journal, open_batches, status_lines
from drivers.batchapi.options import BatchApiOptions, BatchLimits
from drivers.batchapi.run import run_batch_api
from drivers.batchapi.summary import BatchRunSummary

__all__ = ["BatchApiOptions", "BatchLimits", "BatchRunSummary", "Journal", "open_batches", "run_batch_api", "status_lines"]
