"""A fresh local Ray with its Prometheus endpoint on, running a few requests through rayfan.

Run as ``python -m tests.metrics_cluster PORT BASE_URL`` by ``tests/test_metrics.py``, in a
process of its own (Ray allows one cluster per driver process, and the tests' session Ray
has no metrics port and may hold other tests' actors). It runs ``rayfan status`` where no
cluster answers and on the new, empty cluster; sends the batch of ``REQUESTS`` through two
adapters sharing a coordinator and closes them (their last reports reach it); leaves one
request hanging at a third adapter (so one is in flight); runs ``rayfan status`` again;
prints one JSON line of what all that gave, then keeps everything alive until its stdin
closes. Starting a Ray costs seconds, so the status command's cluster paths share it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import sys

import ray

from actors.adapter.retry import RetryPolicy
from actors.adapter.settings import EndpointSettings
from actors.models import ChatTask
from actors.ratelimit.limits import Limits
from drivers.cli import main as rayfan
from drivers.cluster import shared_limit, start_adapters
from drivers.fanout import fan_out

KEY = "sk-RECOGNIZABLE-metrics-5e1d"
MODEL = "gpt-4o-mini"
RPM = 6000
REPORT_INTERVAL_MS = 200
"""Ray exports at most once a second whatever this says (lower is for its own metrics agent)."""
REQUESTS = [
    *(f"question number {i}" for i in range(8)),
    "fails once [[mock status=500 times=1]]",
    "rate limited once [[mock status=429 retry_after_ms=300 times=1]]",
    "never works [[mock status=400]]",
]
HANGING = "never answered [[mock hang]]"


def status(*flags: str) -> tuple[int, str]:
    """``rayfan status FLAGS``: its exit code and what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = rayfan(["status", *flags])
    return code, printed.getvalue()


def main(port: int, base_url: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    no_cluster = status("--address", f"127.0.0.1:{closed}")
    ray.init(
        address="local",
        num_cpus=1,
        include_dashboard=False,
        logging_level=logging.WARNING,
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": REPORT_INTERVAL_MS},
    )
    empty = status()
    endpoint = EndpointSettings(base_url=base_url, api_key=KEY)
    limit = shared_limit(2, endpoint=endpoint, model=MODEL, limits=Limits(rpm=RPM))
    quick = RetryPolicy(min_wait_s=0.01, max_wait_s=0.05)
    adapters = start_adapters(2, endpoint=endpoint, model=MODEL, limit=limit, retry=quick, max_in_flight=16)
    tasks = [ChatTask(custom_id=f"m{i}", messages=[{"role": "user", "content": text}], max_tokens=8) for i, text in enumerate(REQUESTS)]
    results = [result for _, result in fan_out(tasks, adapters, max_in_flight=16)]
    ray.get([adapter.close.remote() for adapter in adapters])
    [holder] = start_adapters(1, endpoint=endpoint, model=MODEL)
    ray.get(holder.submit_task.remote(ChatTask(custom_id="hang", messages=[{"role": "user", "content": HANGING}])))
    running = status()
    outcomes: dict[str, int] = {}
    for result in results:
        outcome = "ok" if result.error is None else result.error.code
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    summary = {
        "outcomes": outcomes,
        "attempts": sum(result.attempts for result in results),
        "prompt_tokens": sum(result.usage.prompt_tokens for result in results),
        "completion_tokens": sum(result.usage.completion_tokens for result in results),
        "cost_usd": sum(result.cost_usd or 0.0 for result in results),
        "scope": limit.scope.name if limit.scope is not None else None,
        "status": {"no_cluster": no_cluster, "empty": empty, "running": running},
    }
    print(json.dumps(summary), flush=True)
    sys.stdin.read()  # the test scrapes meanwhile; it closes our stdin when done
    ray.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
