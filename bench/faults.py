"""rayfan under faults: one record per input, whatever dies mid-run.

    python bench/faults.py [--requests N] [--latency S] [--adapters K] [--max-in-flight W]
                           [--scenarios baseline,adapter_kill,...] [--timeout S] [--keep DIR]

Starts a two-node ``ray.cluster_utils.Cluster`` on this machine (head num_cpus=1, one worker
node num_cpus=1, no dashboard), the fake endpoint in a subprocess of its own (this script's
``_server`` mode: a ``MockServer`` whose request log the script can read) with ``--latency``
seconds per request, and runs each scenario as ``python -m drivers.cli run ... --address
<cluster> --adapters K --max-in-flight W`` subprocesses into a fresh output file:

* ``baseline``: no fault; its wall time is the reference.
* ``adapter_kill``: at ~30% of the output, kill -9 one adapter actor's worker process.
* ``driver_kill``: kill -9 the rayfan process at ~20/40/60% of the output, re-running the
  same command after each kill, then let it finish.
* ``ctrl_c``: SIGINT at ~50%, then re-run to completion.
* ``endpoint_faults``: ~10% of the prompts carry one transient directive (500, 503, drop,
  invalid_json) with ``times=1``.

Adapter actors are found through a probe subprocess (this script's ``_probe`` mode) that joins
the cluster as a Ray driver: ``ray.util.state.list_actors`` when the dashboard is up, else
the GCS's own actor table (``ray._private.state.actors()``), since the cluster has no dashboard.

Per scenario one row: requests, records, records per input (inputs with exactly one record
/ N; duplicates and missing are counted), failed records, prompts answered "ok" more than
once by the endpoint (billed twice), retries per request (from ``rayfan.attempts``), the
driver's ``resent`` count, requests the endpoint received after a driver kill and before
the next start ("orphan": sent by the dead driver's adapters), kills done, and wall /
baseline wall. The scenario functions take N, for a smaller run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY = "sk-bench-not-a-key"
ADAPTER_CLASS = "OpenAIAdapter"
FAULTS = ("status=500", "status=503", "drop", "invalid_json")
SCENARIOS = ("baseline", "adapter_kill", "driver_kill", "ctrl_c", "endpoint_faults")


# --- the fake endpoint and the actor probe, each in a subprocess of its own -----------------


def _server_main(latency: float) -> None:
    """A MockServer whose log is read over stdin/stdout: ``reset``, ``dump PATH``; EOF stops it."""
    from actors.process_gc import tune_for_many_open_requests
    from drivers.mock_server import MockConfig, MockServer

    tune_for_many_open_requests()
    with MockServer(MockConfig(latency_s=latency)) as server:
        print(server.base_url, flush=True)
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "reset":
                server.reset()
            elif command == "dump":
                with open(argument, "w") as out:
                    for entry in server.requests():
                        messages = (entry.body or {}).get("messages") or [{}]
                        out.write(json.dumps({"prompt": messages[-1].get("content"), "outcome": entry.outcome, "at": entry.received_at}) + "\n")
            print("done", flush=True)


def _probe_main(address: str) -> None:
    """Joins the cluster; for each ``list`` line, prints the live adapter actors as one JSON line."""
    import logging

    import ray

    ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    for line in sys.stdin:
        if line.strip() != "list":
            continue
        try:
            from ray.util.state import list_actors

            filters = [("class_name", "=", ADAPTER_CLASS), ("state", "=", "ALIVE")]
            found = [{"pid": a.pid, "job": a.job_id, "id": a.actor_id} for a in list_actors(address=address, filters=filters, timeout=5)]
        except Exception:  # no dashboard: the GCS's actor table
            from ray._private import state

            found = [
                {"pid": a["Pid"], "job": a["JobID"], "id": a["ActorID"]}
                for a in state.actors().values()
                if a["ActorClassName"] == ADAPTER_CLASS and a["State"] == "ALIVE" and a["Pid"]
            ]
        print(json.dumps(found), flush=True)


class _Pipe:
    """A helper subprocess driven line by line over stdin/stdout."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.process = subprocess.Popen(
            [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
        )

    def ask(self, line: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f"helper {self.process.args[2:]} exited ({self.process.poll()})")
        return answer.strip()

    def close(self) -> None:
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


# --- the bench: cluster, server, probe ------------------------------------------------------


@dataclass
class Bench:
    address: str
    base_url: str
    server: _Pipe
    probe: _Pipe
    workdir: Path
    adapters: int = 4
    max_in_flight: int = 64
    timeout: float = 300.0
    """Bound on each wait of a scenario (a condition, a process exit)."""

    def adapters_alive(self) -> list[dict]:
        return json.loads(self.probe.ask("list"))

    def answered(self) -> list[dict]:
        dump = self.workdir / "server-log.jsonl"
        self.server.ask(f"dump {dump}")
        return [json.loads(line) for line in dump.read_text().splitlines()]


@contextmanager
def bench(latency: float, *, adapters: int = 4, max_in_flight: int = 64, timeout: float = 300.0, workdir: Path | None = None) -> Iterator[Bench]:
    """A two-node cluster, the fake endpoint and the probe; everything is stopped on exit."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from ray.cluster_utils import Cluster

    scratch = None
    if workdir is None:
        scratch = tempfile.TemporaryDirectory(prefix="rayfan-faults-")
        workdir = Path(scratch.name)
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    server = probe = None
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        server = _Pipe("_server", "--latency", str(latency))
        assert server.process.stdout is not None
        base_url = server.process.stdout.readline().strip()
        assert base_url.startswith("http"), f"the fake server did not start: {base_url!r}"
        probe = _Pipe("_probe", cluster.address)
        yield Bench(cluster.address, base_url, server, probe, workdir, adapters, max_in_flight, timeout)
    finally:
        for helper in (probe, server):
            if helper is not None:
                helper.close()
        cluster.shutdown()
        if scratch is not None:
            scratch.cleanup()


# --- inputs, runs, rows ---------------------------------------------------------------------


def write_input(path: Path, count: int, fault_every: int = 0) -> dict[str, str]:
    """``count`` prompt-shorthand lines; with ``fault_every`` k, every k-th prompt carries a
    transient directive (cycling over FAULTS) with ``times=1``. Returns custom_id -> prompt."""
    prompts = {}
    for i in range(count):
        text = f"fault bench prompt number {i}"
        if fault_every and i % fault_every == 0:
            text += f" [[mock {FAULTS[(i // fault_every) % len(FAULTS)]} times=1]]"
        prompts[f"r{i}"] = text
    path.write_text("".join(json.dumps({"custom_id": key, "prompt": text}) + "\n" for key, text in prompts.items()))
    return prompts


def lines_in(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@dataclass
class Run:
    """One scenario: the same ``rayfan run`` command, started as often as the scenario needs."""

    bench: Bench
    name: str
    source: Path
    out: Path
    started: float = field(default_factory=time.monotonic)
    process: subprocess.Popen[str] | None = None
    starts: int = 0
    kills: int = 0
    notes: list[str] = field(default_factory=list)
    start_times: list[float] = field(default_factory=list)
    kill_times: list[float] = field(default_factory=list)
    """``time.monotonic()`` (system-wide, as the fake server's log) of each start and each driver kill."""

    def start(self) -> None:
        b = self.bench
        command = [sys.executable, "-m", "drivers.cli", "run", str(self.source), "-o", str(self.out), "--base-url", b.base_url]
        command += ["--address", b.address, "--adapters", str(b.adapters), "--max-in-flight", str(b.max_in_flight)]
        env = {**os.environ, "OPENAI_API_KEY": KEY, "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("OPENAI_BASE_URL", None)
        self.starts += 1
        self.start_times.append(time.monotonic())
        with open(self.out.with_suffix(".stdout"), "a") as stdout, open(self.out.with_suffix(".stderr"), "a") as stderr:
            self.process = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr, text=True, cwd=ROOT)

    def wait_for_lines(self, count: int) -> bool:
        """Polls the output until it has ``count`` lines; False if the process ended first."""
        assert self.process is not None
        deadline = time.monotonic() + self.bench.timeout
        while lines_in(self.out) < count:
            if self.process.poll() is not None:
                self.notes.append(f"run {self.starts} ended (exit {self.process.returncode}) before {count} lines")
                return False
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name}: fewer than {count} lines after {self.bench.timeout} s")
            time.sleep(0.02)
        return True

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.kill_times.append(time.monotonic())
            self.kills += 1
        self.wait()

    def wait(self) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout=self.bench.timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(f"{self.name}: rayfan did not exit within {self.bench.timeout} s") from None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def finish(self) -> int:
        """Runs (again) until rayfan exits on its own; re-runs after a non-zero exit, up to 3 times."""
        for _ in range(3):
            if self.process is None or self.process.poll() is not None:
                self.start()
            code = self.wait()
            if code == 0:
                return 0
            self.notes.append(f"run {self.starts} exited {code}")
            self.process = None
        return code


def _new_run(b: Bench, name: str, requests: int, fault_every: int = 0) -> tuple[Run, dict[str, str]]:
    folder = b.workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    source, out = folder / "in.jsonl", folder / "out.jsonl"
    for stale in (out, out.with_suffix(".stdout"), out.with_suffix(".stderr")):
        stale.unlink(missing_ok=True)
    prompts = write_input(source, requests, fault_every)
    b.server.ask("reset")
    return Run(b, name, source, out), prompts


def measure(run: Run, prompts: dict[str, str]) -> dict:
    """The row of one finished scenario (see the module docstring)."""
    wall = time.monotonic() - run.started
    records = [json.loads(line) for line in run.out.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]
    per_id = Counter(record["custom_id"] for record in records)
    log = run.bench.answered()
    answered_ok = Counter(entry["prompt"] for entry in log if entry["outcome"] == "ok")
    # requests that reached the endpoint after a driver was killed and before the next run started:
    # sent by the dead driver's adapters (orphans), not by any live driver
    gaps = [(kill, min((t for t in run.start_times if t > kill), default=float("inf"))) for kill in run.kill_times]
    after_kill = sum(any(kill < entry["at"] < start for kill, start in gaps) for entry in log)
    attempts = [(record.get("rayfan") or {}).get("attempts") for record in records]
    attempts = [a for a in attempts if isinstance(a, int)]
    stdout = run.out.with_suffix(".stdout").read_text()
    resent = sum(int(line.split()[1]) for line in stdout.splitlines() if line.startswith("resent:"))
    return {
        "scenario": run.name,
        "requests": len(prompts),
        "records": len(records),
        "exactly_once": sum(per_id[key] == 1 for key in prompts),
        "duplicates": sum(count > 1 for key, count in per_id.items() if key in prompts),
        "missing": sum(key not in per_id for key in prompts),
        "unknown": sum(key not in prompts for key in per_id),
        "failed": sum(record.get("error") is not None for record in records),
        "errors": dict(Counter((record.get("error") or {}).get("code") for record in records if record.get("error"))),
        "billed_twice": sum(count > 1 for count in answered_ok.values()),
        "never_ok": sum(answered_ok[text] == 0 for text in prompts.values()),
        "retries_per_request": (sum(max(a - 1, 0) for a in attempts) / len(attempts)) if attempts else None,
        "resent": resent,
        "sent_after_driver_kill": after_kill,
        "kills": run.kills,
        "starts": run.starts,
        "wall_s": wall,
        "notes": run.notes,
        "output": str(run.out),
    }


# --- the scenarios --------------------------------------------------------------------------


def scenario_baseline(b: Bench, requests: int) -> dict:
    run, prompts = _new_run(b, "baseline", requests)
    run.start()
    run.finish()
    return measure(run, prompts)


def scenario_adapter_kill(b: Bench, requests: int, at: float = 0.3) -> dict:
    run, prompts = _new_run(b, "adapter_kill", requests)
    run.start()
    if run.wait_for_lines(max(1, int(at * requests))):
        alive = b.adapters_alive()
        if alive:
            victim = alive[0]
            try:
                os.kill(victim["pid"], signal.SIGKILL)
                run.kills += 1
                run.notes.append(f"killed adapter pid {victim['pid']} at {lines_in(run.out)} lines")
            except ProcessLookupError:
                run.notes.append(f"adapter pid {victim['pid']} already gone")
        else:
            run.notes.append("no live adapter found to kill")
    run.finish()
    return measure(run, prompts)


def scenario_driver_kill(b: Bench, requests: int, at: tuple[float, ...] = (0.2, 0.4, 0.6)) -> dict:
    return _kill_driver(b, "driver_kill", requests, at, signal.SIGKILL)


def scenario_ctrl_c(b: Bench, requests: int, at: tuple[float, ...] = (0.5,)) -> dict:
    return _kill_driver(b, "ctrl_c", requests, at, signal.SIGINT)


def _kill_driver(b: Bench, name: str, requests: int, at: tuple[float, ...], sig: signal.Signals) -> dict:
    run, prompts = _new_run(b, name, requests)
    run.start()
    for fraction in at:
        if run.process is None or run.process.poll() is not None:
            run.start()
        if run.wait_for_lines(max(1, int(fraction * requests))):
            run.notes.append(f"{sig.name} at {lines_in(run.out)} lines")
            run.signal(sig)
    run.finish()
    return measure(run, prompts)


def scenario_endpoint_faults(b: Bench, requests: int, fault_every: int = 10) -> dict:
    run, prompts = _new_run(b, "endpoint_faults", requests, fault_every)
    run.start()
    run.finish()
    return measure(run, prompts)


SCENARIO_FUNCTIONS: dict[str, Callable[[Bench, int], dict]] = {
    "baseline": scenario_baseline,
    "adapter_kill": scenario_adapter_kill,
    "driver_kill": scenario_driver_kill,
    "ctrl_c": scenario_ctrl_c,
    "endpoint_faults": scenario_endpoint_faults,
}
LABELS = {
    "baseline": "baseline",
    "adapter_kill": "adapter kill -9",
    "driver_kill": "driver kill -9 x3",
    "ctrl_c": "Ctrl-C then resume",
    "endpoint_faults": "endpoint faults (10%)",
}


def print_table(rows: list[dict]) -> None:
    base = next((row["wall_s"] for row in rows if row["scenario"] == "baseline"), None)
    header = f"{'scenario':24}{'requests':>9}{'records':>9}{'rec/input':>10}{'dup':>5}{'miss':>5}{'failed':>7}{'billed 2x':>10}{'retries/req':>12}{'resent':>7}{'orphan':>7}{'kills':>6}{'wall s':>8}{'/base':>7}"
    print(header)
    for row in rows:
        retries = f"{row['retries_per_request']:.3f}" if row["retries_per_request"] is not None else "-"
        ratio = f"{row['wall_s'] / base:.2f}" if base else "-"
        print(
            f"{LABELS.get(row['scenario'], row['scenario']):24}{row['requests']:>9}{row['records']:>9}"
            f"{row['exactly_once'] / row['requests']:>10.4f}{row['duplicates']:>5}{row['missing']:>5}{row['failed']:>7}"
            f"{row['billed_twice']:>10}{retries:>12}{row['resent']:>7}{row['sent_after_driver_kill']:>7}{row['kills']:>6}{row['wall_s']:>8.1f}{ratio:>7}"
        )
    for row in rows:
        if row["notes"] or row["errors"]:
            print(f"  {row['scenario']}: {'; '.join(row['notes'])}{' errors ' + str(row['errors']) if row['errors'] else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--latency", type=float, default=0.2, help="fake endpoint latency per request, seconds")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on each wait in a scenario, seconds")
    parser.add_argument("--keep", type=Path, default=None, help="keep inputs, outputs and logs in this directory")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}")
    rows = []
    with bench(args.latency, adapters=args.adapters, max_in_flight=args.max_in_flight, timeout=args.timeout, workdir=args.keep) as b:
        print(f"cluster {b.address}, endpoint {b.base_url} (latency {args.latency} s), {args.requests:,} requests, "
              f"{args.adapters} adapters, {args.max_in_flight} in flight", flush=True)
        for name in chosen:
            try:
                rows.append(SCENARIO_FUNCTIONS[name](b, args.requests))
            except TimeoutError as error:
                print(f"{name}: {error}", flush=True)
                continue
            print(json.dumps(rows[-1]), flush=True)
    print()
    print_table(rows)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        helper = argparse.ArgumentParser()
        helper.add_argument("mode")
        helper.add_argument("--latency", type=float, default=0.0)
        _server_main(helper.parse_args().latency)
    elif len(sys.argv) > 1 and sys.argv[1] == "_probe":
        _probe_main(sys.argv[2])
    else:
        main()
