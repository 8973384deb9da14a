"""rayfan against the hand-written baseline (asyncio + AsyncOpenAI + a semaphore), same fake endpoint.

    python bench/throughput.py [--scene a|b|all] [--repeat N]

Scene a: 5,000 requests at zero latency. Scene b: 20,000 requests at 2 s latency with 2,000
in flight (ideal: 20 s). Each side runs in its own subprocess; CPU is summed over that
process and all its descendants (Ray's workers, raylet and GCS included), excluding the
fake server, which runs in a third process. Prints requests/s, wall time, CPU ms per
request, and the rayfan / baseline ratios. The side "coordinated" is rayfan as
``rayfan run`` uses it: the adapters share a rate-limit coordinator (here with no limit
given or learned, so it only counts), which costs token counting and lease bookkeeping.
The side "http_pool" is the adapters' HTTP client alone in one process (no Ray, no tasks,
no retries): the best this box and this fake server allow, against which rayfan's own
cost shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.http_client import run_pool  # noqa: E402
from bench.proc_cpu import cpu_used, tree_cpu_seconds  # noqa: E402

SCENES = {"a": {"requests": 5_000, "latency": 0.0, "in_flight": 512}, "b": {"requests": 20_000, "latency": 2.0, "in_flight": 2_000}}
KEY = "sk-bench-not-a-key"
SIDES = ("baseline", "rayfan", "coordinated", "http_pool")


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"benchmark prompt number {i} about rate limits"}]


async def _baseline(base_url: str, count: int, in_flight: int) -> int:
    """What users write by hand: one AsyncOpenAI client, a semaphore, gather."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=KEY)  # the SDK default: 2 retries
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> bool:
        async with gate:
            reply = await client.chat.completions.create(model="gpt-4o-mini", messages=_messages(i), max_tokens=16)
            return bool(reply.choices[0].message.content)

    results = await asyncio.gather(*(one(i) for i in range(count)))
    await client.close()
    return sum(results)


def _rayfan(base_url: str, count: int, in_flight: int, adapters: int, coordinated: bool) -> tuple[int, float, float]:
    import ray

    from actors import ChatTask, Limits
    from drivers import fan_out, start_adapters
    from drivers.cluster import shared_limit

    ray.init(include_dashboard=False, logging_level="WARNING")
    limit = shared_limit(adapters, endpoint=endpoint, model="gpt-4o-mini", limits=Limits()) if coordinated else None
    handles = start_adapters(adapters, endpoint=endpoint, model="gpt-4o-mini", limit=limit, max_in_flight=in_flight)
    warm = [ChatTask(custom_id=f"w{i}", messages=_messages(i), max_tokens=16) for i in range(20 * adapters)]
    assert all(result.ok for _, result in fan_out(warm, handles))
    before = tree_cpu_seconds(os.getpid())
    started = time.perf_counter()
    tasks = (ChatTask(custom_id=f"r{i}", messages=_messages(i), max_tokens=16) for i in range(count))
    ok = sum(result.ok for _, result in fan_out(tasks, handles, max_in_flight=in_flight))
    wall = time.perf_counter() - started
    cpu = cpu_used(before, tree_cpu_seconds(os.getpid()))
    ray.shutdown()
    return ok, wall, cpu


def _worker(args: argparse.Namespace) -> None:
    if args.side in ("baseline", "http_pool"):
        before = tree_cpu_seconds(os.getpid())
        started = time.perf_counter()
        if args.side == "baseline":
            ok = asyncio.run(_baseline(args.url, args.count, args.in_flight))
        else:
            ok = uvloop.run(run_pool(args.url, args.count, args.in_flight))
        wall = time.perf_counter() - started
        cpu = cpu_used(before, tree_cpu_seconds(os.getpid()))
    else:
        ok, wall, cpu = _rayfan(args.url, args.count, args.in_flight, args.adapters, coordinated=args.side == "coordinated")
    print(json.dumps({"ok": ok, "wall_s": wall, "cpu_s": cpu}))


def _measure(side: str, url: str, scene: dict[str, float], adapters: int) -> dict[str, float]:
    command = [sys.executable, __file__, "_worker", side, url, str(scene["requests"]), str(scene["in_flight"]), str(adapters)]
    completed = subprocess.run(command, capture_output=True, text=True, check=True)
    row = json.loads(completed.stdout.strip().splitlines()[-1])
    assert row["ok"] == scene["requests"], f"{side}: only {row['ok']} of {scene['requests']} succeeded"
    return {"rps": row["ok"] / row["wall_s"], "wall_s": row["wall_s"], "cpu_ms": 1000 * row["cpu_s"] / row["ok"]}


def _start_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, "-m", "drivers.mock_server", "--port", "0", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", choices=["a", "b", "all"], default="all")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; medians are printed")
    parser.add_argument("--adapters", type=int, default=2)
    args = parser.parse_args()
    for name in ["a", "b"] if args.scene == "all" else [args.scene]:
        scene = SCENES[name]
        server, url = _start_server(scene["latency"])
        try:
            runs = {side: [_measure(side, url, scene, args.adapters) for _ in range(args.repeat)] for side in SIDES}
        finally:
            server.terminate()
            server.wait()
        _report(name, scene, runs)


def _report(name: str, scene: dict[str, float], runs: dict[str, list[dict[str, float]]]) -> None:
    median = {side: {key: statistics.median(run[key] for run in rows) for key in rows[0]} for side, rows in runs.items()}
    print(f"\nscene {name}: {scene['requests']:,} requests, latency {scene['latency']} s, {scene['in_flight']:,} in flight; medians of {len(runs['rayfan'])} runs")
    print(f"{'':26}{'req/s':>8}{'wall s':>10}{'CPU ms/req':>12}")
    for side in SIDES:
        row = median[side]
        print(f"{side:26}{row['rps']:>8.0f}{row['wall_s']:>10.2f}{row['cpu_ms']:>12.3f}")
    for side in SIDES[1:]:
        ratio = {key: median[side][key] / median["baseline"][key] for key in median[side]}
        print(f"{side + ' / baseline':26}{ratio['rps']:>8.2f}{ratio['wall_s']:>10.2f}{ratio['cpu_ms']:>12.2f}")
    if scene["latency"]:
        ideal = scene["requests"] / scene["in_flight"] * scene["latency"]
        for side in SIDES[1:]:
            print(f"{side} wall / ideal {ideal:.0f} s: {median[side]['wall_s'] / ideal:.2f}")
        for side in ("rayfan", "coordinated"):
            print(f"{side} wall / http_pool wall (rayfan's own cost): {median[side]['wall_s'] / median['http_pool']['wall_s']:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker = argparse.ArgumentParser()
        worker.add_argument("worker")
        worker.add_argument("side")
        worker.add_argument("url")
        worker.add_argument("count", type=int)
        worker.add_argument("in_flight", type=int)
        worker.add_argument("adapters", type=int)
        _worker(worker.parse_args())
    else:
        main()
