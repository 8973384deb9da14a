"""Adapters sharing one rate limit: with the coordinator, and each on its own.

    python bench/rate_limit.py [--rpm 1200] [--steady-s 30] [--repeat 1]

The fake endpoint enforces ``--rpm`` per key (a continuous bucket that starts full, like
OpenAI's) and answers 429 with retry-after when it is exceeded. Each configuration sends
``rpm + rpm/60 * steady_s`` requests: the first ``rpm`` fit the full bucket, the rest
take ``steady_s`` at the limit. Configurations: the coordinator with 1, 4 and 16 adapters,
and "no coordinator" with 4 adapters each limited to the full limit on its own.

Per configuration it prints: the achieved rate at the limit as a fraction of the limit
(the slope of a least-squares line through the server's acceptance times over the last
two thirds of the time at the limit, so one-time effects such as the burst and the
coordinator's headroom do not count, and leases arriving in lumps average out), 429s as a fraction of requests
sent, requests that failed (retries exhausted), coordinator calls (leases, reports,
watch answers) per request, and the wall time of the whole batch.
Targets: >= 0.97 of the limit, < 0.5% 429s, < 0.2 calls per request.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray  # noqa: E402

from actors import ChatTask, CoordinatedLimit, Limits, LocalLimit, OpenAIAdapter, coordinator_for  # noqa: E402
from actors.endpoint_settings import EndpointSettings  # noqa: E402
from actors.limiter import LimitSpec  # noqa: E402
from drivers.fanout import fan_out  # noqa: E402
from drivers.mock_server import MockConfig, MockServer  # noqa: E402

MODEL = "gpt-4o-mini"
CONFIGS = [("coordinator", 1), ("coordinator", 4), ("coordinator", 16), ("no coordinator", 4)]


@dataclass(frozen=True)
class Row:
    achieved: float
    rejected: float
    failed: int
    calls_per_request: float
    requests: int
    wall_s: float


def _tasks(count: int) -> list[ChatTask]:
    return [
        ChatTask(custom_id=f"r{i}", messages=[{"role": "user", "content": f"benchmark prompt {i} about shared limits"}], max_tokens=16)
        for i in range(count)
    ]


def _run(kind: str, adapters: int, args: argparse.Namespace, round_: int) -> Row:
    key = f"sk-bench-{kind.replace(' ', '-')}-{adapters}-{round_}"  # a scope of its own per run
    limits = Limits(rpm=args.rpm)
    with MockServer(MockConfig(rpm_limit=args.rpm, latency_s=args.latency)) as server:
        coordinator = coordinator_for(server.base_url, key, MODEL, limits=limits) if kind == "coordinator" else None
        limit: LimitSpec = (
            CoordinatedLimit(coordinator=coordinator, adapters=adapters, limits=limits) if coordinator else LocalLimit(limits=limits)
        )
        handles = [OpenAIAdapter.remote(endpoint=EndpointSettings(base_url=server.base_url, api_key=key), model=MODEL, limit=limit) for _ in range(adapters)]
        ray.get([handle.status.remote() for handle in handles])  # all started before the clock runs
        count = args.rpm + args.rpm * args.steady_s // 60
        started = time.monotonic()
        results = [result for _, result in fan_out(_tasks(count), handles, max_in_flight=args.max_in_flight)]
        wall = time.monotonic() - started
        ray.get([handle.close.remote() for handle in handles])  # their last reports reach the coordinator
        calls = ray.get(coordinator.snapshot.remote()).calls if coordinator else 0
        stats = ray.get([handle.stats.remote() for handle in handles])
        accepted = sorted(entry.received_at for entry in server.requests() if entry.outcome == "ok")
        for handle in [*handles, *([coordinator] if coordinator else [])]:
            ray.kill(handle)
    sent = sum(s.requests for s in stats)
    steady = [at for at in accepted if at >= accepted[0] + args.steady_s / 3]
    return Row(
        achieved=_slope(steady) * 60 / args.rpm,
        rejected=sum(s.rate_limited for s in stats) / sent,
        failed=sum(not result.ok for result in results),
        calls_per_request=calls / sent,
        requests=sent,
        wall_s=wall,
    )


def _slope(times: list[float]) -> float:
    """Acceptances per second: the least-squares slope of the count against time."""
    return statistics.linear_regression(times, range(len(times))).slope


def _median(rows: list[Row]) -> Row:
    fields = asdict(rows[0])
    return Row(**{name: statistics.median(asdict(row)[name] for row in rows) for name in fields})  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--steady-s", type=int, default=30, help="seconds at the limit after the initial burst")
    parser.add_argument("--latency", type=float, default=0.2, help="the fake endpoint's latency per request")
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration; medians are printed")
    args = parser.parse_args()
    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    logging.getLogger("actors").setLevel(logging.ERROR)  # the no-coordinator run logs every retry
    rows = {config: [_run(*config, args, round_) for round_ in range(args.repeat)] for config in CONFIGS}
    ray.shutdown()
    print(f"\n{args.rpm:,} RPM limit, {args.rpm + args.rpm * args.steady_s // 60:,} requests each"
          f" ({args.steady_s} s at the limit after the burst), latency {args.latency} s; medians of {args.repeat}")
    print(f"{'configuration':<16}{'adapters':>9}{'of limit':>10}{'429s':>8}{'failed':>8}{'calls/req':>11}{'sent':>7}{'wall s':>8}")
    for (kind, adapters), runs in rows.items():
        row = _median(runs)
        calls = f"{row.calls_per_request:.3f}" if kind == "coordinator" else "-"
        print(
            f"{kind:<16}{adapters:>9}{row.achieved:>10.3f}{row.rejected:>8.2%}{row.failed:>8.0f}{calls:>11}{row.requests:>7.0f}{row.wall_s:>8.1f}"
        )
    print("targets: >= 0.97 of the limit, < 0.5% 429s, < 0.2 coordinator calls per request at 16 adapters")


if __name__ == "__main__":
    main()
