"""rayfan against the hand-written baseline and against a bare aiohttp client, same fake endpoint.

    python bench/throughput.py [--scene a|b|all] [--repeat N] [--sides S,S,...] [--tls]

Scene a: 5,000 requests at zero latency. Scene b: 20,000 requests at 2 s latency with 2,000
in flight (ideal: 20 s). Each side runs in its own subprocess; CPU is summed over that
process and all its descendants (Ray's workers, raylet and GCS included), excluding the
fake server, which runs in a process of its own. Prints requests/s, wall time, CPU ms per
request, the ratios to the baseline, wall / ideal (scene b) and rayfan's wall / aiohttp's.

Sides (``--sides``, comma-separated; default all four; ratios needing a missing side are
skipped):

* ``baseline``: what users write by hand: one ``openai.AsyncOpenAI`` client (the SDK's
  default transport and 2 retries), an ``asyncio.Semaphore``, ``gather``.
* ``rayfan``: ``drivers.fan_out`` over 2 adapter actors (``start_adapters(...,
  max_in_flight=N)``), no rate limiter: like for like with the baseline. Plain JSON
  requests go through each adapter's one aiohttp session (``actors/adapter/transport.py``).
* ``coordinated``: the same adapters sharing a rate-limit coordinator, as ``rayfan run``
  uses them (no limit given or learned here, so it only counts: token counting and lease
  bookkeeping).
* ``aiohttp``: the floor: one plain ``aiohttp.ClientSession`` in one process on uvloop (no
  Ray, no rayfan, no retries), the same bodies with at most N in flight, each JSON answer
  decoded. The best this box and this fake server allow with rayfan's transport.

``--tls`` serves the fake endpoint over HTTPS with a throwaway CA and a certificate for
127.0.0.1 made by ``trustme`` at run time in a temporary directory (removed at the end);
every side trusts that CA and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.proc_cpu import cpu_used, tree_cpu_seconds  # noqa: E402

SCENES = {"a": {"requests": 5_000, "latency": 0.0, "in_flight": 512}, "b": {"requests": 20_000, "latency": 2.0, "in_flight": 2_000}}
KEY = "sk-bench-not-a-key"
SIDES = ("baseline", "rayfan", "coordinated", "aiohttp")
NO_CA = "-"  # the worker argument when the endpoint is plain HTTP


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"benchmark prompt number {i} about rate limits"}]


def _body(i: int) -> dict[str, object]:
    return {"model": "gpt-4o-mini", "messages": _messages(i), "max_tokens": 16}


async def _baseline(base_url: str, count: int, in_flight: int, ca_file: str | None) -> int:
    """What users write by hand: one AsyncOpenAI client, a semaphore, gather."""
    import openai

    if ca_file is None:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=KEY)  # the SDK default: 2 retries
    else:  # the SDK's default transport, trusting the bench CA
        http_client = openai.DefaultAsyncHttpxClient(verify=ssl.create_default_context(cafile=ca_file))
        client = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, http_client=http_client)
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> bool:
        async with gate:
            reply = await client.chat.completions.create(model="gpt-4o-mini", messages=_messages(i), max_tokens=16)
            return bool(reply.choices[0].message.content)

    results = await asyncio.gather(*(one(i) for i in range(count)))
    await client.close()
    return sum(results)


async def _aiohttp(base_url: str, count: int, in_flight: int, ca_file: str | None) -> int:
    """The floor: one plain aiohttp session, a semaphore, gather; the number of decoded answers."""
    import aiohttp

    tls = ssl.create_default_context(cafile=ca_file) if ca_file is not None else True
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = base_url.rstrip("/") + "/chat/completions"
    gate = asyncio.Semaphore(in_flight)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight, ssl=tls)) as session:

        async def one(i: int) -> bool:
            async with gate, session.post(url, data=json.dumps(_body(i)).encode(), headers=headers) as response:
                reply = json.loads(await response.read())
                return response.status == 200 and bool(reply["choices"][0]["message"]["content"])

        return sum(await asyncio.gather(*(one(i) for i in range(count))))


def _rayfan(base_url: str, count: int, in_flight: int, adapters: int, coordinated: bool, ca_file: str | None) -> tuple[int, float, float]:
    import ray

    from actors import ChatTask, Limits
    from actors.adapter.settings import EndpointSettings
    from drivers import fan_out, start_adapters
    from drivers.cluster import shared_limit

    ca_pem = Path(ca_file).read_text() if ca_file is not None else None
    endpoint = EndpointSettings(base_url=base_url, api_key=KEY, ca_pem=ca_pem)
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")  # its own Ray, never one found running
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
    ca_file = None if args.ca_file == NO_CA else args.ca_file
    if args.side in ("baseline", "aiohttp"):
        before = tree_cpu_seconds(os.getpid())
        started = time.perf_counter()
        if args.side == "baseline":
            ok = asyncio.run(_baseline(args.url, args.count, args.in_flight, ca_file))
        else:
            ok = uvloop.run(_aiohttp(args.url, args.count, args.in_flight, ca_file))
        wall = time.perf_counter() - started
        cpu = cpu_used(before, tree_cpu_seconds(os.getpid()))
    else:
        coordinated = args.side == "coordinated"
        ok, wall, cpu = _rayfan(args.url, args.count, args.in_flight, args.adapters, coordinated, ca_file)
    print(json.dumps({"ok": ok, "wall_s": wall, "cpu_s": cpu}))


def _measure(side: str, url: str, scene: dict[str, float], adapters: int, ca_file: str | None) -> dict[str, float]:
    command = [sys.executable, __file__, "_worker", side, url, str(scene["requests"]), str(scene["in_flight"]), str(adapters)]
    command.append(ca_file or NO_CA)
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-4000:])
        raise RuntimeError(f"{side}: the worker failed (exit {completed.returncode})")
    row = json.loads(completed.stdout.strip().splitlines()[-1])
    assert row["ok"] == scene["requests"], f"{side}: only {row['ok']} of {scene['requests']} succeeded"
    return {"rps": row["ok"] / row["wall_s"], "wall_s": row["wall_s"], "cpu_ms": 1000 * row["cpu_s"] / row["ok"]}


def _make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (trustme): cert chain, key, CA, as PEM files."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    chain, key, ca_file = directory / "server-chain.pem", directory / "server-key.pem", directory / "ca.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_file)
    return chain, key, ca_file


def _start_server(latency: float, tls: tuple[Path, Path] | None) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "drivers.mock", "--port", "0", "--latency", str(latency)]
    if tls is not None:
        command += ["--certfile", str(tls[0]), "--keyfile", str(tls[1])]
    server = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def _sides(text: str) -> tuple[str, ...]:
    chosen = {name.strip() for name in text.split(",") if name.strip()}
    unknown = chosen - set(SIDES)
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose among {','.join(SIDES)}, not {text!r}")
    return tuple(side for side in SIDES if side in chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", choices=["a", "b", "all"], default="all")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; medians are printed")
    parser.add_argument("--adapters", type=int, default=2)
    parser.add_argument("--sides", type=_sides, default=SIDES, help=f"comma-separated subset of {','.join(SIDES)} (default: all)")
    parser.add_argument("--tls", action="store_true", help="serve the fake endpoint over HTTPS (a throwaway trustme CA)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rayfan-bench-tls-") as scratch:
        chain, key, ca_file = _make_tls(Path(scratch)) if args.tls else (None, None, None)
        for name in ["a", "b"] if args.scene == "all" else [args.scene]:
            scene = SCENES[name]
            server, url = _start_server(scene["latency"], (chain, key) if chain and key else None)
            runs: dict[str, list[dict[str, float]]] = {side: [] for side in args.sides}
            try:
                for _ in range(args.repeat):  # the sides take turns, so slow drifts of the box hit them alike
                    for side in args.sides:
                        runs[side].append(_measure(side, url, scene, args.adapters, str(ca_file) if ca_file else None))
            finally:
                server.terminate()
                server.wait()
            _report(name, scene, url.split(":", 1)[0], runs)


def _report(name: str, scene: dict[str, float], protocol: str, runs: dict[str, list[dict[str, float]]]) -> None:
    median = {side: {key: statistics.median(run[key] for run in rows) for key in rows[0]} for side, rows in runs.items()}
    repeat = len(next(iter(runs.values())))
    print(
        f"\nscene {name} ({protocol}): {scene['requests']:,} requests, latency {scene['latency']} s, "
        f"{scene['in_flight']:,} in flight; medians of {repeat} runs"
    )
    print(f"{'':34}{'req/s':>8}{'wall s':>10}{'CPU ms/req':>12}")
    for side, row in median.items():
        print(f"{side:34}{row['rps']:>8.0f}{row['wall_s']:>10.2f}{row['cpu_ms']:>12.3f}")
    if "baseline" in median:
        for side in (side for side in median if side != "baseline"):
            ratio = {key: median[side][key] / median["baseline"][key] for key in median[side]}
            print(f"{side + ' / baseline':34}{ratio['rps']:>8.2f}{ratio['wall_s']:>10.2f}{ratio['cpu_ms']:>12.2f}")
    if "aiohttp" in median:
        for side in (side for side in ("rayfan", "coordinated") if side in median):
            ratio = {key: median[side][key] / median["aiohttp"][key] for key in median[side]}
            print(f"{side + ' / aiohttp':34}{ratio['rps']:>8.2f}{ratio['wall_s']:>10.2f}{ratio['cpu_ms']:>12.2f}")
    if scene["latency"]:
        ideal = scene["requests"] / scene["in_flight"] * scene["latency"]
        for side in (side for side in median if side != "baseline"):
            print(f"{side} wall / ideal {ideal:.0f} s: {median[side]['wall_s'] / ideal:.2f}")
    if "aiohttp" in median:
        for side in (side for side in ("rayfan", "coordinated") if side in median):
            print(f"{side} wall / aiohttp wall (rayfan's own cost): {median[side]['wall_s'] / median['aiohttp']['wall_s']:.2f}")

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker = argparse.ArgumentParser()
        worker.add_argument("worker")
        worker.add_argument("side")
        worker.add_argument("url")
        worker.add_argument("count", type=int)
        worker.add_argument("in_flight", type=int)
        worker.add_argument("adapters", type=int)
        worker.add_argument("ca_file", help=f"the CA PEM file to trust, or {NO_CA!r} for plain HTTP")
        _worker(worker.parse_args())
    else:
        main()
