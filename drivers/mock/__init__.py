"""A small, deterministic fake of the OpenAI HTTP API (aiohttp) for tests, demos and benchmarks.

It speaks real HTTP on 127.0.0.1 (HTTPS when given an ``ssl_context``) so the real ``openai``
client, its retries, timeouts and connection handling are exercised end to end, with no key
and no network.

Content is deterministic. The token count of a text is its number of whitespace-separated
words, plus one per message (a fake, not a tokenizer). The reply is built from the first
words of the last user message; ``max_tokens`` (one word = one token) truncates it.

Faults are scripted by a directive anywhere in the prompt text, ``[[mock key=value flag ...]]``:

* ``status=429|500|503|400|401|404|408|409|422``: an OpenAI-shaped error. ``code=`` overrides
  the error code (``code=insufficient_quota`` also sets that type); ``retry_after=S`` and
  ``retry_after_ms=MS`` send the ``retry-after`` / ``retry-after-ms`` headers as given.
* ``drop``: close the connection without answering (the client sees a connection error).
* ``hang``: never answer; the request is logged as "disconnected" when the client gives up.
* ``invalid_json``: 200 with a body that is not JSON (for streams: an SSE event that is not).
* ``times=N``: the fault applies only to the first N times this exact body (ignoring the
  stream flags) is seen, then the request succeeds.
* ``latency=S``: this request's latency, instead of ``MockConfig.latency_s``.

Per request the order is: validate (400), latency, rate limits (429), scripted fault, reply.
Optional per-key RPM/TPM limits use rayfan's own continuous token buckets, refilled at
limit/60 per second and holding ``rate_window_s`` of the limit (60: a minute's burst at
once; 1: the limit metered per second, as OpenAI may), and answer 429 with OpenAI's headers.

Run ``python -m drivers.mock --port N [--latency S] [--rpm N] [--tpm N] [--rate-window S]
[--certfile PEM --keyfile PEM]`` to serve in the foreground, over HTTPS with a certificate
(prints the base URL, stops on SIGINT/SIGTERM).

The Batch API is there too: ``/v1/files`` (upload, read, content) and ``/v1/batches``
(create, retrieve, cancel, list). A batch's lines are answered as the endpoints above answer
them, directives included; ``MockConfig.batch`` sets when (a delay, a hold, the completion
window after which it expires) and what it refuses (the API's limits, a full queue), and
``MockServer.batches.submissions()`` lists every batch made and the requests it carried.

Modules: ``server`` (config, request log, the app, the CLI), ``parsing`` (request bodies and
directives), ``replies`` (response bodies), ``rate_limits`` (per-key limits and their 429s),
``batches`` (files and batches).
"""

from drivers.mock.server import MockConfig, MockServer, ReceivedRequest, main

__all__ = ["MockConfig", "MockServer", "ReceivedRequest", "main"]
