"""Adapters sharing one rate limit, against a server that enforces it per minute or per second.

    python bench/rate_limit.py [--rpm 3000] [--seconds 30] [--adapters 1,4,8,32]
                               [--windows 60,1] [--limits given,learned] [--repeat 3]

The fake endpoint enforces ``--rpm`` per key over a window (``MockConfig.rate_window_s``):
60 lets a minute's worth go at once, 1 meters the limit per second, as OpenAI documents it
may ("600 RPM can mean 10 requests in any second"). Its headers describe the bucket it
enforces. Each run sends one window's worth plus ``--seconds`` at the limit, through
``rayfan``'s coordinator, with the limit given (``--rpm``) or learned from the headers.
``--nodes 2`` runs the adapters spread over a two-node ``ray.cluster_utils.Cluster`` on this
machine instead of one Ray node. A last row runs each adapter on its own (no coordinator, each limited to the full limit)
against the per-second server, to show what the coordinator is for.

Per configuration it prints, medians of ``--repeat`` runs: the achieved rate as a fraction
of the limit (the least-squares slope of the server's acceptance times from ten seconds after its
bucket first ran dry: the window's burst and the first ten seconds at the limit left out), the first to last acceptance
against the time the limit allows after the burst, 429s as a fraction of the answers, requests that failed,
coordinator calls (leases, reports, watch answers) per request, and the wall time.
Targets for every coordinated row: >= 0.98 of the limit, <= 0.5 % 429s, 0 failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from actors import ChatTask, CoordinatedLimitSpec, Limits, LocalLimitSpec, OpenAIAdapter, coordinator_for  # noqa: E402
from actors.adapter.settings import EndpointSettings  # noqa: E402
from actors.ratelimit.specs import LimitSpec  # noqa: E402
from drivers.fanout import fan_out  # noqa: E402
from drivers.mock import MockConfig, MockServer  # noqa: E402

MODEL = "gpt-4o-mini"
SETTLE_S = 10.0
"""The achieved rate is measured from this long after the server's bucket first ran dry."""


@dataclass(frozen=True)
class Config:
    adapters: int
    window_s: float
    limits: str  # "given", "learned" or "alone" (no coordinator, each adapter limited on its own)


@dataclass(frozen=True)
class Row:
    achieved: float
    span_vs_ideal: float
    """First to last acceptance against the time the limit allows after the window's burst."""
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


def _run(config: Config, args: argparse.Namespace, round_: int) -> Row:
    key = f"sk-bench-{config.limits}-{config.adapters}-{config.window_s}-{round_}"  # a scope of its own per run
    given = Limits(rpm=args.rpm) if config.limits != "learned" else Limits()
    server_config = MockConfig(rpm_limit=args.rpm, rate_window_s=config.window_s, latency_s=args.latency)
    with MockServer(server_config) as server:
        coordinator = coordinator_for(server.base_url, key, MODEL, limits=given) if config.limits != "alone" else None
        limit: LimitSpec = (
            CoordinatedLimitSpec(coordinator=coordinator, adapters=config.adapters, limits=given) if coordinator else LocalLimitSpec(limits=given)
        )
        endpoint = EndpointSettings(base_url=server.base_url, api_key=key)
        handles = [
            OpenAIAdapter.options(scheduling_strategy="SPREAD").remote(endpoint=endpoint, model=MODEL, limit=limit)
            for _ in range(config.adapters)
        ]
        ray.get([handle.status.remote() for handle in handles])  # all started before the clock runs
        count = int(args.rpm * (config.window_s + args.seconds) / 60)
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
    burst = int(args.rpm * config.window_s / 60)
    steady = [at for at in accepted if at >= _at_the_limit(accepted, burst, args.rpm / 60) + SETTLE_S]  # none: never at the limit
    ideal_s = (count - burst) / (args.rpm / 60)
    return Row(
        achieved=_slope(steady) * 60 / args.rpm if len(steady) > 1 else float("nan"),
        span_vs_ideal=(accepted[-1] - accepted[0]) / ideal_s,
        rejected=sum(s.rate_limited for s in stats) / sent,
        failed=sum(not result.ok for result in results),
        calls_per_request=calls / sent,
        requests=sent,
        wall_s=wall,
    )


def _at_the_limit(accepted: list[float], burst: int, per_s: float) -> float:
    """When the server's bucket first ran (nearly) dry: the first acceptance by which it had
    taken its whole window plus the refill since the first, less two seconds of the limit
    (the coordinator's headroom keeps one). Before, it may take more than the limit; a burst
    pushed slowly through two cores ends later than it began."""
    first = accepted[0]
    for count, at in enumerate(accepted, start=1):
        if count >= burst + per_s * (at - first - 2.0):
            return at
    return accepted[-1]


def _slope(times: list[float]) -> float:
    """Acceptances per second: the least-squares slope of the count against time."""
    return statistics.linear_regression(times, range(len(times))).slope


def _median(rows: list[Row]) -> Row:
    fields = asdict(rows[0])
    return Row(**{name: statistics.median(asdict(row)[name] for row in rows) for name in fields})  # type: ignore[arg-type]


def _configs(args: argparse.Namespace) -> list[Config]:
    adapters = [int(n) for n in args.adapters.split(",")]
    windows = [float(w) for w in args.windows.split(",")]
    configs = [Config(n, w, kind) for w in windows for kind in args.limits.split(",") for n in adapters]
    if args.alone:
        configs.append(Config(4, min(windows), "alone"))
    return configs


def _start_ray(nodes: int) -> Cluster | None:
    """A Ray of the bench's own: one local node, or a ``Cluster`` of ``nodes`` on this machine."""
    if nodes <= 1:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        return None
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False)
    cluster.wait_for_nodes()
    return cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=int, default=3000)
    parser.add_argument("--seconds", type=int, default=30, help="seconds at the limit after the first window's burst (> 10)")
    parser.add_argument("--adapters", default="1,4,8,32", help="adapter counts, comma-separated")
    parser.add_argument("--windows", default="60,1", help="the server's enforcement windows in seconds, comma-separated")
    parser.add_argument("--limits", default="given,learned", help="given (--rpm) and/or learned (from headers)")
    parser.add_argument("--alone", action=argparse.BooleanOptionalAction, default=True, help="add the no-coordinator row")
    parser.add_argument("--latency", type=float, default=0.2, help="the fake endpoint's latency per request")
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; medians are printed")
    parser.add_argument("--nodes", type=int, default=1, help="Ray nodes on this machine (ray.cluster_utils.Cluster); adapters SPREAD")
    parser.add_argument("--json-rows", type=Path, default=None, metavar="FILE", help="also append each row as a JSON line (bench/scaling.py)")
    args = parser.parse_args()
    cluster = _start_ray(args.nodes)
    logging.getLogger("actors").setLevel(logging.ERROR)  # the no-coordinator run logs every retry
    print(f"{args.rpm:,} RPM limit, a window's worth + {args.seconds} s at the limit per run, latency {args.latency} s,"
          f" {args.nodes} Ray node(s); medians of {args.repeat}", flush=True)
    print(f"{'server window':>13}{'limits':>9}{'adapters':>9}{'of limit':>10}{'vs ideal':>10}{'429s':>8}{'failed':>8}{'calls/req':>11}{'sent':>7}{'wall s':>8}",
          flush=True)
    for config in _configs(args):
        row = _median([_run(config, args, round_) for round_ in range(args.repeat)])
        calls = f"{row.calls_per_request:.3f}" if config.limits != "alone" else "-"
        window = "per minute" if config.window_s == 60 else f"per {config.window_s:g} s"
        achieved = "-" if math.isnan(row.achieved) else f"{row.achieved:.3f}"  # the adapters never caught up with the server
        print(
            f"{window:>13}{config.limits:>9}{config.adapters:>9}{achieved:>10}{row.span_vs_ideal:>10.3f}{row.rejected:>8.2%}{row.failed:>8.0f}"
            f"{calls:>11}{row.requests:>7.0f}{row.wall_s:>8.1f}",
            flush=True,
        )
        if args.json_rows is not None:
            with open(args.json_rows, "a") as rows:
                rows.write(json.dumps({"nodes": args.nodes, **asdict(config), **asdict(row)}) + "\n")
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()
    print("targets (coordinated rows): >= 0.98 of the limit, <= 0.5% 429s, 0 failed")


if __name__ == "__main__":
    main()
