"""What a `rayfan run` costs outside its requests, against Ray's own start and stop.

    python bench/startup.py [--repeat N] [--scenes own,joined,batch]

Every side runs as a user would run it, a process of its own timed from outside (Python's
start and imports included), against one fake endpoint served by this process
(``MockServer``, whose request log gives the first and last request's arrival):

* ``own``: ``rayfan run`` of 20 requests (no latency) starting its own Ray (``--address
  local``), against a process that only does ``ray.init(address="local")`` and
  ``ray.shutdown()``. rayfan's overhead is its wall time minus the time from its first to
  its last request at the endpoint; the target is at most 1 s over Ray's own.
* Beside Ray alone, the floor of the design: Ray's start and stop with two actors (a run's
  default adapters) that each import the SDK in a new worker process, and nothing else.
* ``joined``: the same three against a Ray that is already running (as after ``ray start
  --head``; here a process of this bench holds one): ``ray.init(address=GCS)`` and
  ``ray.shutdown()`` against ``rayfan run --address GCS``. Each run there leaves spare
  adapters for the next (``drivers/spares.py``): the first run, which finds none, is
  printed on its own line, and the medians are of the runs after it.
* ``batch``: 2,000 requests with 0.5 s latency at 100 in flight (ideal 10 s): ``rayfan
  run`` with its own Ray against a one-process asyncio script (one ``AsyncOpenAI``, a
  semaphore, ``gather``), as wall-time ratio.

Medians of ``--repeat`` runs (default 3); the machine is shared, so read the ratios and
differences, not single times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.mock import MockServer  # noqa: E402

KEY = "sk-bench-startup-not-a-key"
RAYFAN = Path(sys.executable).parent / "rayfan"
RAY_ALONE = (
    "import logging, sys, ray\n"
    "ray.init(address=sys.argv[1], include_dashboard=False, logging_level=logging.WARNING)\n"
    "ray.shutdown()\n"
)
RAY_WITH_SDK_ACTORS = (
    "import logging, sys, ray\n"
    "ray.init(address=sys.argv[1], include_dashboard=False, logging_level=logging.WARNING)\n"
    "@ray.remote\n"
    "class WithTheSdk:\n"
    "    def __init__(self):\n"
    "        import openai\n"
    "    def ready(self):\n"
    "        return True\n"
    "actors = [WithTheSdk.remote() for _ in range(int(sys.argv[2]))]\n"
    "assert all(ray.get([actor.ready.remote() for actor in actors]))\n"
    "ray.shutdown()\n"
)
"""The floor of any design whose adapters are Ray actors owning an SDK client: Ray's start and
stop, plus as many worker processes as a run has adapters, each importing the SDK."""
HOLD_RAY = (
    "import logging, sys, ray\n"
    "ray.init(address='local', include_dashboard=False, logging_level=logging.WARNING)\n"
    "print(ray.get_runtime_context().gcs_address, flush=True)\n"
    "sys.stdin.read()\n"
)
ASYNCIO_SCRIPT = (
    "import asyncio, sys, openai\n"
    "async def main(base_url, count, in_flight):\n"
    "    client = openai.AsyncOpenAI(base_url=base_url, api_key=sys.argv[4])\n"
    "    gate = asyncio.Semaphore(in_flight)\n"
    "    async def one(i):\n"
    "        async with gate:\n"
    "            reply = await client.chat.completions.create(model='gpt-4o-mini', max_tokens=16,\n"
    "                messages=[{'role': 'user', 'content': f'startup bench prompt {i}'}])\n"
    "            return bool(reply.choices[0].message.content)\n"
    "    ok = sum(await asyncio.gather(*(one(i) for i in range(count))))\n"
    "    await client.close()\n"
    "    assert ok == count, ok\n"
    "asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))\n"
)


@dataclass
class Timed:
    wall_s: float
    requests_s: float = 0.0
    """From the first to the last request's arrival at the endpoint."""

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.requests_s


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "AZURE_OPENAI_", "RAY_ADDRESS"))}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", "OPENAI_API_KEY": KEY, **extra}


JOINING = {"RAY_AUTH_MODE": "token"}
"""A local Ray enables token authentication and keeps its token in ~/.ray/auth_token; a
process joining it says so, as a user does after ``ray start --head``."""


def _timed(command: list[str], server: MockServer | None = None, cwd: Path | None = None, **env: str) -> Timed:
    if server is not None:
        server.reset()
    started = time.perf_counter()
    completed = subprocess.run(command, env=_env(**env), cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({completed.returncode}):\n{completed.stdout[-2000:]}\n{completed.stderr[-3000:]}")
    if server is None:
        return Timed(wall)
    arrivals = [entry.received_at for entry in server.requests()]
    return Timed(wall, max(arrivals) - min(arrivals))


def _rayfan(server: MockServer, workdir: Path, requests: int, address: str, in_flight: int = 256) -> Timed:
    source, out = workdir / f"in-{requests}.jsonl", workdir / "out.jsonl"
    if not source.exists():
        source.write_text("".join(json.dumps({"prompt": f"startup bench prompt {i}", "max_tokens": 16}) + "\n" for i in range(requests)))
    out.unlink(missing_ok=True)
    command = [str(RAYFAN), "run", str(source), "-o", str(out), "--base-url", server.base_url, "--address", address]
    joining = JOINING if address != "local" else {}
    timed = _timed([*command, "--max-in-flight", str(in_flight), "--no-progress"], server, cwd=workdir, **joining)
    records = out.read_text().splitlines()
    assert len(records) == requests and all(json.loads(line)["error"] is None for line in records), "every request succeeded"
    return timed


def _ray_alone(address: str) -> Timed:
    return _timed([sys.executable, "-c", RAY_ALONE, address], **(JOINING if address != "local" else {}))


def _ray_with_sdk_actors(address: str, adapters: int = 2) -> Timed:
    return _timed([sys.executable, "-c", RAY_WITH_SDK_ACTORS, address, str(adapters)], **(JOINING if address != "local" else {}))


def _median(values: list[float]) -> float:
    return statistics.median(values)


def scene_own(server: MockServer, workdir: Path, repeat: int) -> None:
    server.configure(latency_s=0.0)
    ray_walls, floor_walls, rayfan_runs = [], [], []
    for _ in range(repeat):
        ray_walls.append(_ray_alone("local").wall_s)
        floor_walls.append(_ray_with_sdk_actors("local").wall_s)
        rayfan_runs.append(_rayfan(server, workdir, 20, "local"))
    _print_overheads("own Ray (started and stopped by the run)", ray_walls, floor_walls, rayfan_runs)


def scene_joined(server: MockServer, workdir: Path, repeat: int) -> None:
    server.configure(latency_s=0.0)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RAY], env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        address = holder.stdout.readline().strip()
        first = _rayfan(server, workdir, 20, address)  # no spare adapters wait yet; it leaves some
        ray_walls, floor_walls, rayfan_runs = [], [], []
        for _ in range(repeat):
            ray_walls.append(_ray_alone(address).wall_s)
            floor_walls.append(_ray_with_sdk_actors(address).wall_s)
            rayfan_runs.append(_rayfan(server, workdir, 20, address))
        _print_overheads(f"a running Ray ({address})", ray_walls, floor_walls, rayfan_runs)
        print(f"  the first run on it (no spares yet): {first.overhead_s:6.2f} s outside its requests, {first.overhead_s - _median(ray_walls):+.2f} s over Ray's own")
    finally:
        holder.communicate(input="", timeout=120)


def _print_overheads(label: str, ray_walls: list[float], floor_walls: list[float], rayfan_runs: list[Timed]) -> None:
    ray_s, floor_s = _median(ray_walls), _median(floor_walls)
    overhead = _median([run.overhead_s for run in rayfan_runs])
    wall = _median([run.wall_s for run in rayfan_runs])
    print(f"{label}:")
    print(f"  Ray alone, init + shutdown:          {ray_s:6.2f} s  (runs: {', '.join(f'{w:.2f}' for w in ray_walls)})")
    print(f"  Ray + 2 actors importing the SDK:    {floor_s:6.2f} s  (runs: {', '.join(f'{w:.2f}' for w in floor_walls)})")
    print(f"  rayfan run of 20 requests, wall:     {wall:6.2f} s")
    print(f"  rayfan outside its requests:         {overhead:6.2f} s  (runs: {', '.join(f'{r.overhead_s:.2f}' for r in rayfan_runs)})")
    print(f"  rayfan overhead - Ray's own:         {overhead - ray_s:+6.2f} s   (target <= +1.00 s)")
    print(f"  rayfan overhead / Ray's own:         {overhead / ray_s:6.2f}")
    print(f"  rayfan overhead - Ray + 2 actors:    {overhead - floor_s:+6.2f} s   (what rayfan adds to the floor of its design)")


def scene_batch(server: MockServer, workdir: Path, repeat: int) -> None:
    count, latency, in_flight = 2_000, 0.5, 100
    server.configure(latency_s=latency)
    script_walls, rayfan_walls = [], []
    for _ in range(repeat):
        script_walls.append(_timed([sys.executable, "-c", ASYNCIO_SCRIPT, server.base_url, str(count), str(in_flight), KEY], server).wall_s)
        rayfan_walls.append(_rayfan(server, workdir, count, "local", in_flight=in_flight).wall_s)
    ideal = count * latency / in_flight
    script, rayfan = _median(script_walls), _median(rayfan_walls)
    print(f"batch: {count:,} requests, {latency} s latency, {in_flight} in flight (ideal {ideal:.1f} s):")
    print(f"  one-process asyncio script:  {script:6.2f} s  (runs: {', '.join(f'{w:.2f}' for w in script_walls)})")
    print(f"  rayfan run, its own Ray:     {rayfan:6.2f} s  (runs: {', '.join(f'{w:.2f}' for w in rayfan_walls)})")
    print(f"  rayfan / script:             {rayfan / script:6.2f}   rayfan - script: {rayfan - script:+.2f} s")


SCENES = {"own": scene_own, "joined": scene_joined, "batch": scene_batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenes", default=",".join(SCENES), help=f"comma-separated, of {', '.join(SCENES)}")
    args = parser.parse_args()
    if not RAYFAN.exists():
        raise SystemExit(f"no {RAYFAN}: install rayfan into this Python first (pip install -e .)")
    with MockServer() as server, tempfile.TemporaryDirectory(prefix="rayfan-startup-") as tmp:
        for name in args.scenes.split(","):
            SCENES[name](server, Path(tmp), args.repeat)


if __name__ == "__main__":
    main()
