"""The adapter's HTTP client (``actors.http_pool.HttpPool``) against aiohttp's, in one process.

    python bench/http_client.py [--requests N] [--in-flight W] [--latency S] [--repeat R]

Both send the same chat-completion POSTs to the fake server (its own process, given
latency) with W in flight on fresh connections, on uvloop as in Ray's actors, and decode
the JSON answers. Prints CPU ms per request (this process only), wall time against the
ideal N / W * S, and the ratios pool / aiohttp; medians of R runs, the sides alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.http_pool import HttpPool  # noqa: E402

HEADERS = {"Authorization": "Bearer sk-bench-not-a-key", "Content-Type": "application/json"}
Post = Callable[[bytes], Awaitable[object]]


def _body(i: int) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"prompt {i}"}], "max_tokens": 16}).encode()


async def _drive(post: Post, count: int, in_flight: int) -> int:
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> bool:
        async with gate:
            return bool(await post(_body(i)))

    return sum(await asyncio.gather(*(one(i) for i in range(count))))


async def run_aiohttp(url: str, count: int, in_flight: int) -> int:
    """aiohttp's client session; the number of answers that decoded."""
    connector = aiohttp.TCPConnector(limit=in_flight, limit_per_host=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(data: bytes) -> object:
            async with session.post(url + "/chat/completions", data=data, headers=HEADERS) as response:
                return json.loads(await response.read())

        return await _drive(post, count, in_flight)


async def run_pool(url: str, count: int, in_flight: int) -> int:
    """The adapter's HTTP client alone: no Ray, no task table, no retries."""
    pool = HttpPool(url, HEADERS, max_connections=in_flight, connect_timeout_s=5.0)

    async def post(data: bytes) -> object:
        return json.loads((await pool.post("/chat/completions", data, 600.0)).body)

    answered = await _drive(post, count, in_flight)
    await pool.close()
    return answered


def _measure(side: Callable[[str, int, int], Awaitable[int]], url: str, count: int, in_flight: int) -> tuple[float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    assert uvloop.run(side(url, count, in_flight)) == count
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=2_000)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-m", "drivers.mock_server", "--port", "0", "--latency", str(args.latency)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    sides = {"aiohttp": run_aiohttp, "HttpPool": run_pool}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    try:
        for _ in range(args.repeat):
            for name, side in sides.items():
                runs[name].append(_measure(side, url, args.requests, args.in_flight))
    finally:
        server.terminate()
        server.wait()
    ideal = args.requests / args.in_flight * args.latency
    print(f"{args.requests:,} requests, {args.in_flight:,} in flight, latency {args.latency} s; medians of {args.repeat}")
    print(f"{'':12}{'CPU ms/req':>12}{'wall s':>9}{'/ ideal':>9}")
    medians = {}
    for name, rows in runs.items():
        wall = statistics.median(row[0] for row in rows)
        cpu_ms = statistics.median(1000 * row[1] / args.requests for row in rows)
        medians[name] = (cpu_ms, wall)
        ratio = f"{wall / ideal:>9.2f}" if ideal else ""
        print(f"{name:12}{cpu_ms:>12.3f}{wall:>9.2f}{ratio}")
    (pool_cpu, pool_wall), (aio_cpu, aio_wall) = medians["HttpPool"], medians["aiohttp"]
    print(f"{'pool / aio':12}{pool_cpu / aio_cpu:>12.2f}{pool_wall / aio_wall:>9.2f}")


if __name__ == "__main__":
    main()
