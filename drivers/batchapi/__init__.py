"""``rayfan run --batch-api``: the requests go as OpenAI Batch API files, at the batch price.

    split (input → batch files) → lifecycle (upload, submit, look, collect, retire; one
    coroutine per batch) → merge (an answer line → a result) → the output, as a synchronous
    run writes it; journal (state.json beside the output: resume without paying twice);
    pool (the adapters, which make the calls); fallback (what batches left unfinished, sent
    synchronously); summary (the run's counts and its batches); options (the flags).

Import the parts from their modules: a synchronous run reads the journal and the options,
and should not pay for the SDK that ``run`` and its parts import.
"""
