"""rayfan's Prometheus metrics, defined once here, recorded by adapters and coordinators.

They are ``ray.util.metrics`` instruments: each Ray worker hands what it records to its
node's metrics agent, which serves them on the node's Prometheus endpoint (Ray prefixes
``ray_``; counters end in ``_total``). Outside a Ray worker (an ``Adapter`` built in a test
or a script) recording still works and goes nowhere, so nothing here checks for Ray.

    adapters      rayfan_requests{model,outcome}       ended requests; outcome: ok, cancelled, or the error code
                  rayfan_retries{model}                attempts after a request's first
                  rayfan_rate_limited{model}           429 answers
                  rayfan_tokens{model,kind}            prompt / completion tokens the server counted
                  rayfan_cost_usd{model}               USD, at the adapter's price table
                  rayfan_request_latency_seconds{model}   slot to result (rate-limit waits, retries included)
                  rayfan_in_flight{adapter}            requests open at the endpoint (queued ones not counted)
    coordinators  rayfan_scope_requests{scope,model}   requests sent by all adapters of the scope
                  rayfan_scope_tokens{scope,model,kind}   reserved / used tokens reported
                  rayfan_scope_rate_limited{scope,model}  429s reported
                  rayfan_scope_paused_seconds{scope,model}  time the whole scope spent paused by 429s
                  rayfan_scope_limit{scope,model,dimension}  RPM / TPM in force
                  rayfan_scope_stopped{scope,model}    1 while the scope is stopped (no credit, a rejected key)

Tags stay few in values: models, outcome codes, scope names (a hash: never the key) and
the gauge's adapter names; never a request id. Instruments are process-wide, as Ray's
metrics registry is; each recorder holds its own tag dictionaries, built once, and an
adapter's recorder adds its counts up before handing them over (``AdapterMetrics``).
"""

from __future__ import annotations

import asyncio

from ray.util.metrics import Counter, Gauge, Histogram

from actors.models import TaskResult

FLUSH_S = 0.5
"""An adapter's counts reach Ray's instruments this long after they change, at most."""
GAUGE_REFRESH_S = 5.0
"""Ray (2.60 measured) stops exporting a gauge about 20 s after its value was last set, even
if it did not change: a gauge that must stay visible is set again this often."""
LATENCY_BOUNDS_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]
"""From a fast local server to a long generation at OpenAI's 600 s default timeout."""

_REQUESTS = Counter("rayfan_requests", "Requests ended, by outcome: ok, cancelled, or the error code", tag_keys=("model", "outcome"))
_RETRIES = Counter("rayfan_retries", "Attempts after a request's first", tag_keys=("model",))
_RATE_LIMITED = Counter("rayfan_rate_limited", "429 answers adapters received", tag_keys=("model",))
_TOKENS = Counter("rayfan_tokens", "Tokens the server counted: kind=prompt or completion", tag_keys=("model", "kind"))
_COST = Counter("rayfan_cost_usd", "Cost in USD at the adapters' price table", tag_keys=("model",))
_LATENCY = Histogram(
    "rayfan_request_latency_seconds",
    "From a request taking an in-flight slot to its result: rate-limit waits and retries included",
    boundaries=LATENCY_BOUNDS_S,
    tag_keys=("model",),
)
_IN_FLIGHT = Gauge("rayfan_in_flight", "Requests an adapter has open at the endpoint (holding its in-flight slots)", tag_keys=("adapter",))

_SCOPE_REQUESTS = Counter("rayfan_scope_requests", "Requests all adapters of a scope sent", tag_keys=("scope", "model"))
_SCOPE_TOKENS = Counter(
    "rayfan_scope_tokens", "Tokens reported to a scope: kind=reserved or used (as the server counts)", tag_keys=("scope", "model", "kind")
)
_SCOPE_RATE_LIMITED = Counter("rayfan_scope_rate_limited", "429s reported to a scope's coordinator", tag_keys=("scope", "model"))
_SCOPE_PAUSED = Counter("rayfan_scope_paused_seconds", "Seconds a whole scope spent paused by 429s", tag_keys=("scope", "model"))
_SCOPE_LIMIT = Gauge("rayfan_scope_limit", "The scope's limit in force: dimension=rpm or tpm", tag_keys=("scope", "model", "dimension"))
_SCOPE_STOPPED = Gauge("rayfan_scope_stopped", "1 while the scope sends nothing (no credit, a rejected key)", tag_keys=("scope", "model"))


class _ModelCounts:
    """One model's counts not yet handed to Ray, and its tag dictionaries, made once."""

    __slots__ = ("tags", "prompt_tags", "completion_tags", "outcome_tags", "outcomes", "retries", "rate_limited", "prompt", "completion", "cost")

    def __init__(self, model: str) -> None:
        self.tags = {"model": model}
        self.prompt_tags = {"model": model, "kind": "prompt"}
        self.completion_tags = {"model": model, "kind": "completion"}
        self.outcome_tags: dict[str, dict[str, str]] = {}
        self.outcomes: dict[str, int] = {}
        self.retries = self.rate_limited = self.prompt = self.completion = 0
        self.cost = 0.0

    def flush(self) -> None:
        for outcome, count in self.outcomes.items():
            tags = self.outcome_tags.get(outcome)
            if tags is None:
                tags = self.outcome_tags[outcome] = {**self.tags, "outcome": outcome}
            _REQUESTS.inc(count, tags)
        for counter, amount, tags in (
            (_RETRIES, self.retries, self.tags),
            (_RATE_LIMITED, self.rate_limited, self.tags),
            (_TOKENS, self.prompt, self.prompt_tags),
            (_TOKENS, self.completion, self.completion_tags),
            (_COST, self.cost, self.tags),
        ):
            if amount > 0:
                counter.inc(amount, tags)
        self.outcomes.clear()
        self.retries = self.rate_limited = self.prompt = self.completion = 0
        self.cost = 0.0


class AdapterMetrics:
    """What one adapter records, per request and per attempt.

    A call into Ray's instruments costs microseconds (its Python wrapper checks the tags
    each time), several per request. So counts add up here and reach Ray within
    ``FLUSH_S`` of changing (Ray exports once a second at most); only a latency is
    observed per request, as a histogram takes no sums. Called on the adapter's event loop.
    """

    def __init__(self, adapter: str) -> None:
        self._adapter = {"adapter": adapter}
        self._models: dict[str, _ModelCounts] = {}
        self._in_flight = 0
        self._flush_at: asyncio.TimerHandle | None = None

    def sending(self) -> None:
        """A request took one of the adapter's in-flight slots."""
        self._in_flight += 1
        self._soon()

    def retried(self, model: str) -> None:
        self._counts(model).retries += 1
        self._soon()

    def rate_limited(self, model: str) -> None:
        self._counts(model).rate_limited += 1
        self._soon()

    def finished(self, model: str, result: TaskResult, latency_s: float | None) -> None:
        """``model``: the one the task asked for (the server may name a dated snapshot);
        ``latency_s``: None for a task that never had a slot (cancelled while waiting)."""
        counts = self._counts(model)
        outcome = "ok" if result.error is None else result.error.code
        counts.outcomes[outcome] = counts.outcomes.get(outcome, 0) + 1
        counts.prompt += result.usage.prompt_tokens
        counts.completion += result.usage.completion_tokens
        counts.cost += result.cost_usd or 0.0
        if latency_s is not None:
            self._in_flight -= 1
            _LATENCY.observe(latency_s, counts.tags)
        self._soon()

    def _counts(self, model: str) -> _ModelCounts:
        counts = self._models.get(model)
        if counts is None:
            counts = self._models[model] = _ModelCounts(model)
        return counts

    def _soon(self) -> None:
        """Flush within ``FLUSH_S``: the one timer is moved earlier if it waits for a refresh."""
        loop = asyncio.get_running_loop()
        due = loop.time() + FLUSH_S
        if self._flush_at is None or self._flush_at.when() > due:
            if self._flush_at is not None:
                self._flush_at.cancel()
            self._flush_at = loop.call_at(due, self._flush)

    def _flush(self) -> None:
        """Hand the counts over; while requests are open, set the gauge again now and then."""
        self._flush_at = None
        _IN_FLIGHT.set(self._in_flight, self._adapter)
        for counts in self._models.values():
            counts.flush()
        if self._in_flight:
            self._flush_at = asyncio.get_running_loop().call_later(GAUGE_REFRESH_S, self._flush)


class ScopeMetrics:
    """What one coordinator records: once per report, not per request. Its gauges keep their
    last values, for the coordinator actor to set again every ``GAUGE_REFRESH_S``."""

    def __init__(self, scope: str, model: str) -> None:
        self._tags = {"scope": scope, "model": model}
        self._reserved = {**self._tags, "kind": "reserved"}
        self._used = {**self._tags, "kind": "used"}
        self._rpm = {**self._tags, "dimension": "rpm"}
        self._tpm = {**self._tags, "dimension": "tpm"}
        self._limits: tuple[int | None, int | None] = (None, None)
        self._stopped = False

    def reported(self, sent: int, reserved_tokens: int, used_tokens: int) -> None:
        if sent > 0:
            _SCOPE_REQUESTS.inc(sent, self._tags)
        if reserved_tokens > 0:
            _SCOPE_TOKENS.inc(reserved_tokens, self._reserved)
        if used_tokens > 0:
            _SCOPE_TOKENS.inc(used_tokens, self._used)

    def rate_limited(self) -> None:
        _SCOPE_RATE_LIMITED.inc(1, self._tags)

    def paused(self, seconds: float) -> None:
        if seconds > 0:
            _SCOPE_PAUSED.inc(seconds, self._tags)

    def limits(self, rpm: int | None, tpm: int | None) -> None:
        """A dimension without a limit reads 0."""
        self._limits = (rpm, tpm)
        _SCOPE_LIMIT.set(rpm or 0, self._rpm)
        _SCOPE_LIMIT.set(tpm or 0, self._tpm)

    def stopped(self, stopped: bool) -> None:
        self._stopped = stopped
        _SCOPE_STOPPED.set(1 if stopped else 0, self._tags)

    def refresh(self) -> None:
        """Set the gauges again, unchanged (see ``GAUGE_REFRESH_S``)."""
        self.limits(*self._limits)
        self.stopped(self._stopped)
