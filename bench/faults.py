"""rayfan under faults: one record per input, whatever dies mid-run.

    python bench/faults.py [--requests N] [--latency S] [--adapters K] [--max-in-flight W]
                           [--scenarios baseline,adapter_kill,...] [--timeout S] [--keep DIR]
                           [--health-checks fast|default|P,T,N] [--json-rows FILE]

Starts a two-node ``ray.cluster_utils.Cluster`` on this machine (head num_cpus=1, one worker
node num_cpus=1, no dashboard; the head's GCS with ``FAST_NODE_FAILURE`` node health
checks unless ``--health-checks`` says otherwise), the fake endpoint in a subprocess of its
own (this script's ``_server`` mode: a ``MockServer`` whose request log the script can read) with ``--latency``
seconds per request, and runs each scenario as ``python -m drivers.cli run ... --address
<cluster> --adapters K --max-in-flight W --no-spares`` subprocesses into a fresh output file
(each run starts its own adapters, which the scenarios find as the actors new since it
started; what a taken spare does when its driver is killed is ``tests/test_spares.py``):

* ``baseline``: no fault; its wall time is the reference.
* ``adapter_kill``: at ~30% of the output, kill -9 one adapter actor's worker process.
* ``node_removed``: at ~30% of the output, remove the worker node holding adapters
  (``Cluster.remove_node(node, allow_graceful=False)``: raylet and its processes SIGKILLed, as
  a crashed machine; a graceful removal would tell the GCS itself), once the head holds an
  adapter of the run too (``start_adapters`` puts them one per node in turn, so with two or
  more it does).
  The row says when the GCS marked the node dead, when the first lost request reached the
  endpoint again (sent by the driver after its ``RayActorError``) and whether and where the
  adapters came back. The next scenario gets a new worker node.
* ``node_frozen``: the same node loss without closing anything: SIGSTOP of the worker node's
  raylet and every process under it (a hung machine or a network partition), so only the
  GCS's health checks can tell; the node is removed after the run.
* ``coordinator_kill``: ``--rpm`` given (3 x N per minute) and the fake endpoint enforcing the
  same limit per second, so it binds all along; at ~50% of the output kill -9 the scope's
  rate-limit coordinator; Ray restarts it (empty). The row counts the endpoint's 429s.
* ``driver_kill``: kill -9 the rayfan process at ~20/40/60% of the output, re-running the
  same command after each kill, then let it finish.
* ``ctrl_c``: SIGINT at ~50%, then re-run to completion.
* ``endpoint_faults``: ~10% of the prompts carry one transient directive (500, 503, drop,
  invalid_json) with ``times=1``.

A kill waits for two conditions, never for a time: the output has the scenario's line count
and the victim (this run's actors, found by the probe) is known. If the run ends first, the
fault did not happen: the scenario runs again on a fresh output with the endpoint's latency
doubled (``--retries``, default 2), so every row reports its fault.

Actors are found through a probe subprocess (this script's ``_probe`` mode) that joins the
cluster as a Ray driver and reads the GCS's own actor and node tables
(``ray._private.state``), since the cluster has no dashboard (the state API would wait for
one to time out). Helpers answer on a channel of their own (Ray prints to a driver's
stdout from other threads), and one that stops answering is a TimeoutError, not a hang.

Per scenario one row: requests, records, records per input (inputs with exactly one record
/ N; duplicates and missing are counted), failed records, prompts answered "ok" more than
once by the endpoint (billed twice), retries per request (from ``rayfan.attempts``), the
driver's ``resent`` count, requests the endpoint received after a driver kill and before
the next start ("orphan": sent by the dead driver's adapters), 429s, kills done, the exit
codes of the rayfan runs, and wall / baseline wall. The scenario functions take N, for a
smaller run (``tests/test_faults.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KEY = "sk-bench-not-a-key"
ADAPTER_CLASS = "OpenAIAdapter"
COORDINATOR_PREFIX = "rayfan-limits-"
FAULTS = ("status=500", "status=503", "drop", "invalid_json")
SCENARIOS = ("baseline", "adapter_kill", "node_removed", "node_frozen", "coordinator_kill", "driver_kill", "ctrl_c", "endpoint_faults")
ANSWER_TIMEOUT_S = 60.0
"""How long a helper (the fake endpoint, the probe) may take to answer one command."""
POLL_S = 0.02
"""How often a wait re-checks its condition (the output's line count, a process)."""
PROBE_S = 0.1
"""How often the probe (a GCS query) is asked, while waiting for a victim or following a node loss."""

FAST_NODE_FAILURE: dict[str, int] = {
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 1_000,
    "health_check_failure_threshold": 3,
}
"""The GCS's node health checks (``ray_config_def.h``; defaults 3,000 ms, 10,000 ms, 5): a node
is marked dead after ``threshold`` failed checks ``period`` apart, each failing at once when the
raylet is gone or after ``timeout`` when it hangs. Ray's defaults take ~15 s (gone) to ~65 s
(hung) before a lost node's actors are restarted; these take ~1.5 s and ~4.5 s. Set on the head
only (the GCS does the checking): ``_system_config`` here, ``RAY_health_check_*`` variables for
``ray start --head`` on a real cluster (README, "Faults")."""


# --- the fake endpoint and the actor probe, each in a subprocess of its own -----------------


def _answer_channel() -> TextIO:
    """The helper's answers go to the stdout it was given; anything else written there (Ray's
    own messages to a driver, from other threads) goes to stderr, so no answer line is torn."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return answers


def _server_main(latency: float) -> None:
    """A MockServer driven over stdin/stdout: ``reset``, ``dump PATH``, ``latency S``, ``rpm N
    [WINDOW_S]`` (0: no limit; the window it is enforced over, default a minute); EOF stops it."""
    from actors.adapter.process_gc import tune_for_many_open_requests
    from drivers.mock import MockConfig, MockServer

    answers = _answer_channel()
    tune_for_many_open_requests()
    with MockServer(MockConfig(latency_s=latency)) as server:
        print(server.base_url, file=answers)
        for line in sys.stdin:
            command, _, argument = line.strip().partition(" ")
            if command == "reset":
                server.reset()
            elif command == "dump":
                with open(argument, "w") as out:
                    for entry in server.requests():
                        messages = (entry.body or {}).get("messages") or [{}]
                        out.write(json.dumps({"prompt": messages[-1].get("content"), "outcome": entry.outcome, "at": entry.received_at}) + "\n")
            elif command == "latency":
                server.configure(latency_s=float(argument))
            elif command == "rpm":  # RPM [WINDOW_S]: the limit (0: none), enforced over that window
                rpm, _, window = argument.partition(" ")
                server.configure(rpm_limit=int(rpm) or None, rate_window_s=float(window or 60))
            print("done", file=answers)


def _probe_main(address: str) -> None:
    """Joins the cluster; answers ``actors`` (rayfan's adapters and coordinators, any state)
    and ``nodes`` (node id -> alive) with one JSON line each, from the GCS's tables."""
    import logging

    import ray
    from ray._private import state

    answers = _answer_channel()
    ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    for line in sys.stdin:
        command = line.strip()
        if command == "actors":
            found: Any = [
                {
                    "id": a["ActorID"],
                    "class": a["ActorClassName"],
                    "name": a["Name"],
                    "state": a["State"],
                    "pid": a["Pid"],
                    "node": a["Address"]["NodeID"],
                    "restarts": a["NumRestarts"],
                }
                for a in state.actors().values()
                if a["ActorClassName"] == ADAPTER_CLASS or a["Name"].startswith(COORDINATOR_PREFIX)
            ]
        elif command == "nodes":
            found = {node["NodeID"]: node["Alive"] for node in ray.nodes()}
        else:
            found = None
        print(json.dumps(found), file=answers)


class _Pipe:
    """A helper subprocess driven line by line over stdin/stdout; its stderr goes to ``log``.

    A thread reads its answers, so a helper that stops answering is a TimeoutError, not a hang."""

    def __init__(self, *args: str, log: Path) -> None:
        self.name = " ".join(args)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        with open(log, "a") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT, env=env
            )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"read {self.name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put("")  # EOF

    def line(self, timeout: float = ANSWER_TIMEOUT_S) -> str:
        """The helper's next line (an answer, or the server's URL at start)."""
        try:
            answer = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"helper {self.name!r} gave no answer within {timeout} s") from None
        if not answer:
            self._lines.put("")
            raise RuntimeError(f"helper {self.name!r} exited ({self.process.poll()})")
        return answer.strip()

    def ask(self, line: str, timeout: float = ANSWER_TIMEOUT_S) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.line(timeout)

    def close(self) -> None:
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


# --- the bench: cluster, server, probe ------------------------------------------------------


@dataclass
class Bench:
    cluster: Any
    """The ``ray.cluster_utils.Cluster``, owned by this process: only it can remove a node."""
    base_url: str
    server: _Pipe
    probe: _Pipe
    workdir: Path
    adapters: int = 4
    max_in_flight: int = 64
    timeout: float = 300.0
    """Bound on each wait of a scenario (a condition, a process exit)."""
    latency: float = 0.2
    """The fake endpoint's latency now (a retried scenario doubles it)."""

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    @property
    def head_node_id(self) -> str:
        return str(self.cluster.head_node.node_id)

    def actors(self) -> list[dict]:
        return list(json.loads(self.probe.ask("actors")))

    def nodes(self) -> dict[str, bool]:
        return dict(json.loads(self.probe.ask("nodes")))

    def answered(self) -> list[dict]:
        dump = self.workdir / "server-log.jsonl"
        self.server.ask(f"dump {dump}")
        return [json.loads(line) for line in dump.read_text().splitlines()]

    def set_latency(self, latency: float) -> None:
        self.server.ask(f"latency {latency}")
        self.latency = latency

    def ensure_worker_node(self) -> None:
        """Every scenario starts on two nodes: a worker node removed by ``node_removed`` is replaced."""
        if not self.cluster.worker_nodes:
            self.cluster.add_node(num_cpus=1)
            self.cluster.wait_for_nodes()


@contextmanager
def bench(
    latency: float,
    *,
    adapters: int = 4,
    max_in_flight: int = 64,
    timeout: float = 300.0,
    workdir: Path | None = None,
    system_config: dict[str, int] | None = None,
) -> Iterator[Bench]:
    """A two-node cluster, the fake endpoint and the probe; everything is stopped on exit.
    ``system_config`` goes to the head (the GCS); None: ``FAST_NODE_FAILURE``, {}: Ray's defaults."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from ray.cluster_utils import Cluster

    scratch = None
    if workdir is None:
        scratch = tempfile.TemporaryDirectory(prefix="rayfan-faults-")
        workdir = Path(scratch.name)
    workdir.mkdir(parents=True, exist_ok=True)
    config = FAST_NODE_FAILURE if system_config is None else system_config
    head_args: dict[str, Any] = {"num_cpus": 1, "include_dashboard": False}
    if config:
        head_args["_system_config"] = dict(config)
    server = _Pipe("_server", "--latency", str(latency), log=workdir / "server.log")  # starts while the cluster does
    probe = cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args=head_args)
        probe = _Pipe("_probe", cluster.address, log=workdir / "probe.log")  # joins the head while the worker node starts
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        base_url = server.line()
        assert base_url.startswith("http"), f"the fake server did not start: {base_url!r}"
        yield Bench(cluster, base_url, server, probe, workdir, adapters, max_in_flight, timeout, latency)
    finally:
        for helper in (probe, server):
            if helper is not None:
                helper.close()
        if cluster is not None:
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
    key: str = KEY
    extra_args: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    process: subprocess.Popen[str] | None = None
    starts: int = 0
    kills: int = 0
    exits: list[int] = field(default_factory=list)
    """Exit code of each rayfan process that ended on its own (not killed by the scenario)."""
    killed_last: bool = False
    """The current process was killed (or interrupted) by the scenario."""
    counted: bool = False
    """The current process's end has been seen (and its exit code kept, unless killed)."""
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    """Scenario-specific measurements, copied into the row."""
    known_actors: set[str] = field(default_factory=set)
    """Actor ids in the GCS before this run started: whatever is new belongs to it."""
    start_times: list[float] = field(default_factory=list)
    kill_times: list[float] = field(default_factory=list)
    """``time.monotonic()`` (system-wide, as the fake server's log) of each start and each driver kill."""

    def start(self) -> None:
        b = self.bench
        command = [sys.executable, "-m", "drivers.cli", "run", str(self.source), "-o", str(self.out), "--base-url", b.base_url]
        command += ["--address", b.address, "--adapters", str(b.adapters), "--max-in-flight", str(b.max_in_flight), "--no-spares", *self.extra_args]
        env = {**os.environ, "OPENAI_API_KEY": self.key, "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("OPENAI_BASE_URL", None)
        self.known_actors |= {actor["id"] for actor in b.actors()}
        self.killed_last = self.counted = False
        self.starts += 1
        self.start_times.append(time.monotonic())
        with open(self.out.with_suffix(".stdout"), "a") as stdout, open(self.out.with_suffix(".stderr"), "a") as stderr:
            self.process = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr, text=True, cwd=ROOT)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_until(self, condition: Callable[[], bool], what: str, every: float = POLL_S) -> bool:
        """Polls ``condition`` while rayfan runs; False (and a note) if the process ended first."""
        deadline = time.monotonic() + self.bench.timeout
        while not condition():
            if not self.running():
                assert self.process is not None
                self.notes.append(f"run {self.starts} ended (exit {self.process.returncode}) before {what}")
                return False
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name}: no {what} after {self.bench.timeout} s")
            time.sleep(every)
        return True

    def wait_for_lines(self, count: int) -> bool:
        """Polls the output until it has ``count`` lines; False if the process ended first."""
        return self.wait_until(lambda: lines_in(self.out) >= count, f"{count} lines")

    def wait_for_victims(self, pick: Callable[[list[dict]], list[dict]], lines: int, what: str = "a victim") -> list[dict] | None:
        """Waits until the output has ``lines`` lines and ``pick`` finds victims among this run's
        live actors (asking the probe at most every ``PROBE_S``); returns the latest pick, or
        None (and a note) if rayfan ended first."""
        victims: list[dict] = []
        asked = -math.inf

        def ready() -> bool:
            nonlocal asked
            if not victims and time.monotonic() - asked >= PROBE_S:
                asked = time.monotonic()
                victims.extend(pick(self.own_actors()))
            return bool(victims) and lines_in(self.out) >= lines

        if not self.wait_until(ready, f"{lines} lines and {what}"):
            return None
        return pick(self.own_actors()) or victims

    def own_actors(self, *, state: str | None = "ALIVE") -> list[dict]:
        """This run's actors (new since it started, in ``state``; None: any state)."""
        return [a for a in self.bench.actors() if a["id"] not in self.known_actors and (state is None or a["state"] == state)]

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.kill_times.append(time.monotonic())
            self.kills += 1
            self.killed_last = True
        self.wait()

    def wait(self) -> int:
        """Waits for the current rayfan process; its exit code counts unless the scenario killed it."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout=self.bench.timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(f"{self.name}: rayfan did not exit within {self.bench.timeout} s") from None
        if not self.killed_last and not self.counted:
            self.exits.append(code)
        self.counted = True
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def finish(self) -> int:
        """Waits until rayfan exits on its own, starting it again after a kill or a non-zero
        exit (up to 3 more starts)."""
        code = 0
        for _ in range(3):
            if self.process is None or self.killed_last:
                self.start()
            code = self.wait()
            if code == 0:
                return 0
            self.notes.append(f"run {self.starts} exited {code}")
            self.process = None
        return code


def _new_run(b: Bench, name: str, requests: int, fault_every: int = 0, **run_args: Any) -> tuple[Run, dict[str, str]]:
    b.ensure_worker_node()
    folder = b.workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    source, out = folder / "in.jsonl", folder / "out.jsonl"
    for stale in (out, out.with_suffix(".stdout"), out.with_suffix(".stderr")):
        stale.unlink(missing_ok=True)
    prompts = write_input(source, requests, fault_every)
    b.server.ask("reset")
    return Run(b, name, source, out, **run_args), prompts


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
    attempts: list[int] = [a for record in records if isinstance(a := (record.get("rayfan") or {}).get("attempts"), int)]
    stdout = run.out.with_suffix(".stdout").read_text()
    resent = sum(int(line.split()[1]) for line in stdout.splitlines() if line.startswith("resent:"))
    rates = [line.removeprefix("rate: ") for line in stdout.splitlines() if line.startswith("rate: ")]
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
        "rate_limited": sum(entry["outcome"] == "error:429" for entry in log),
        "rate": rates[-1] if rates else None,  # the last run's summary line: its rate against the limits
        "kills": run.kills,
        "starts": run.starts,
        "exits": run.exits,
        "latency_s": run.bench.latency,
        "wall_s": wall,
        "notes": run.notes,
        **run.facts,
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
    victims = run.wait_for_victims(lambda actors: [a for a in actors if a["class"] == ADAPTER_CLASS], max(1, int(at * requests)), "an adapter")
    if victims:
        victim = victims[0]
        try:
            os.kill(victim["pid"], signal.SIGKILL)
            run.kills += 1
            run.notes.append(f"killed adapter pid {victim['pid']} at {lines_in(run.out)} lines")
        except ProcessLookupError:
            run.notes.append(f"adapter pid {victim['pid']} already gone")
    run.finish()
    return measure(run, prompts)


def scenario_node_removed(b: Bench, requests: int, at: float = 0.3) -> dict:
    """Remove the worker node (SIGKILL of its raylet and processes) once it holds adapters of this run."""
    return _lose_node(b, "node_removed", requests, at, freeze=False)


def scenario_node_frozen(b: Bench, requests: int, at: float = 0.3) -> dict:
    """SIGSTOP the worker node's raylet and processes (a hung machine, a partition: no
    connection is closed, so only the GCS's health checks can tell); removed at the end."""
    return _lose_node(b, "node_frozen", requests, at, freeze=True)


def _lose_node(b: Bench, name: str, requests: int, at: float, *, freeze: bool) -> dict:
    """Lose the worker node once it holds adapters of this run and the output has its lines;
    time what follows (``_follow_node_loss``, ``_first_resend``)."""
    run, prompts = _new_run(b, name, requests)
    node = next(iter(b.cluster.worker_nodes))
    node_id = str(node.node_id)
    run.start()

    def pick(actors: list[dict]) -> list[dict]:
        """This run's adapters on the worker node, once another runs elsewhere (with two or
        more, ``start_adapters`` puts them one per node)."""
        adapters = [a for a in actors if a["class"] == ADAPTER_CLASS]
        lost = [a for a in adapters if a["node"] == node_id]
        return lost if len(lost) < len(adapters) else []

    victims = run.wait_for_victims(pick, max(1, int(at * requests)), "adapters on both nodes")
    if not victims:
        run.finish()
        return measure(run, prompts)
    on_node = [a for a in b.actors() if a["state"] == "ALIVE" and a["node"] == node_id and a["name"].startswith(COORDINATOR_PREFIX)]
    lines_then = lines_in(run.out)
    frozen = _node_pids(node) if freeze else []
    lost_at = time.monotonic()
    if freeze:
        for pid in frozen:
            _signal_quietly(pid, signal.SIGSTOP)
    else:
        b.cluster.remove_node(node, allow_graceful=False)
    run.kills += 1
    what = "froze" if freeze else "removed"
    coordinator = " (and the coordinator)" if on_node else ""
    run.notes.append(f"{what} the worker node with {len(victims)} of the {b.adapters} adapters{coordinator} at {lines_then} lines")
    try:
        _follow_node_loss(run, node_id, {v["name"] for v in victims}, lost_at)
        run.finish()
    finally:
        if freeze:
            for pid in frozen:
                _signal_quietly(pid, signal.SIGKILL)
            b.cluster.remove_node(node, allow_graceful=False)
    row = measure(run, prompts)
    row["first_resend_s"] = _first_resend(b.answered(), lost_at)
    return row


def _node_pids(node: Any) -> list[int]:
    """The node's own processes (raylet, agents) and every process under them (its workers)."""
    from ray._private import ray_constants

    roots = {info.process.pid for kind, infos in node.all_processes.items() if kind != ray_constants.PROCESS_TYPE_REAPER for info in infos}
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return sorted(found)


def _signal_quietly(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _follow_node_loss(run: Run, node_id: str, victims: set[str], lost_at: float) -> None:
    """Polls the GCS while rayfan runs: when it marks the node dead, when each lost adapter
    (by name) has a replacement alive (``NAME.1``) and on which node (into ``run.facts``,
    seconds after ``lost_at``)."""
    b = run.bench
    node_dead_s: float | None = None
    back: dict[str, tuple[float, str]] = {}
    while run.running() and (node_dead_s is None or len(back) < len(victims)):
        now = time.monotonic() - lost_at
        if node_dead_s is None and not b.nodes().get(node_id, False):
            node_dead_s = now
        for actor in b.actors():
            replaces = actor["name"].partition(".")[0]
            if replaces in victims and replaces not in back and actor["state"] == "ALIVE" and actor["node"] != node_id:
                back[replaces] = (now, actor["node"])
        if now > b.timeout:
            break
        time.sleep(PROBE_S)
    run.facts["node_dead_s"] = node_dead_s
    run.facts["replaced_s"] = max((t for t, _ in back.values()), default=None)
    run.facts["lost_adapters"] = len(victims)
    run.facts["replaced"] = len(back)
    run.facts["replaced_on_head"] = sum(node == b.head_node_id for _, node in back.values())


def _first_resend(log: list[dict], lost_at: float) -> float | None:
    """Seconds from the loss to the first request for a prompt the endpoint had seen before
    reaching it again: the driver got its ``RayActorError`` for the lost batches and sent
    their open tasks to a live adapter (no other fault in this run sends a prompt twice)."""
    seen: set[str] = set()
    for entry in sorted(log, key=lambda entry: entry["at"]):
        if entry["prompt"] in seen:
            return float(entry["at"]) - lost_at
        seen.add(entry["prompt"])
    return None


def scenario_coordinator_kill(b: Bench, requests: int, at: float = 0.5, rpm: int | None = None, window_s: float = 1.0) -> dict:
    """A run under ``--rpm`` whose coordinator is killed -9 halfway. The endpoint enforces the
    same limit per second (``window_s``), as OpenAI may: the limit binds all along (the run
    takes ~20 s), so a coordinator or fallback share that let through too much shows as 429s."""
    rpm = rpm or max(60, 3 * requests)
    key = f"{KEY}-limited-{uuid.uuid4().hex[:8]}"  # a scope (coordinator) of its own, fresh each time
    run, prompts = _new_run(b, "coordinator_kill", requests, key=key, extra_args=["--rpm", str(rpm)])
    b.server.ask(f"rpm {rpm} {window_s}")
    try:
        run.start()
        run.notes.append(f"--rpm {rpm}, the endpoint enforcing {rpm} rpm over {window_s:g} s")
        victims = run.wait_for_victims(
            lambda actors: [a for a in actors if a["name"].startswith(COORDINATOR_PREFIX)], max(1, int(at * requests)), "the coordinator"
        )
        if victims:
            victim = victims[0]
            try:
                os.kill(victim["pid"], signal.SIGKILL)
                killed_at = time.monotonic()
                run.kills += 1
                run.notes.append(f"killed coordinator pid {victim['pid']} at {lines_in(run.out)} lines")
                back = run.wait_until(lambda: _back(b, victim), "the coordinator was back", every=PROBE_S)
                run.facts["coordinator_back_s"] = time.monotonic() - killed_at if back else None
            except ProcessLookupError:
                run.notes.append(f"coordinator pid {victim['pid']} already gone")
        run.finish()
    finally:
        b.server.ask("rpm 0")
    return measure(run, prompts)


def _back(b: Bench, victim: dict) -> bool:
    """The victim actor is alive again, in a new process."""
    return any(a["id"] == victim["id"] and a["state"] == "ALIVE" and a["pid"] and a["pid"] != victim["pid"] for a in b.actors())


def scenario_driver_kill(b: Bench, requests: int, at: tuple[float, ...] = (0.2, 0.4, 0.6)) -> dict:
    return _kill_driver(b, "driver_kill", requests, at, signal.SIGKILL)


def scenario_ctrl_c(b: Bench, requests: int, at: tuple[float, ...] = (0.5,)) -> dict:
    return _kill_driver(b, "ctrl_c", requests, at, signal.SIGINT)


def _kill_driver(b: Bench, name: str, requests: int, at: tuple[float, ...], sig: signal.Signals) -> dict:
    run, prompts = _new_run(b, name, requests)
    run.start()
    for fraction in at:
        if run.killed_last:
            run.start()
        if not run.wait_for_lines(max(1, int(fraction * requests))):
            break  # it finished before this kill
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
    "node_removed": scenario_node_removed,
    "node_frozen": scenario_node_frozen,
    "coordinator_kill": scenario_coordinator_kill,
    "driver_kill": scenario_driver_kill,
    "ctrl_c": scenario_ctrl_c,
    "endpoint_faults": scenario_endpoint_faults,
}
EXPECTED_KILLS = {"adapter_kill": 1, "node_removed": 1, "node_frozen": 1, "coordinator_kill": 1, "driver_kill": 3, "ctrl_c": 1}
LABELS = {
    "baseline": "baseline",
    "adapter_kill": "adapter kill -9",
    "node_removed": "worker node removed",
    "node_frozen": "worker node frozen",
    "coordinator_kill": "coordinator kill -9",
    "driver_kill": "driver kill -9 x3",
    "ctrl_c": "Ctrl-C then resume",
    "endpoint_faults": "endpoint faults (10%)",
}


def run_scenario(b: Bench, name: str, requests: int, retries: int = 2) -> dict:
    """One scenario; if the run ended before its fault could happen, again with the endpoint
    twice as slow (up to ``retries`` times), so the row reports the fault. Latency restored after."""
    base_latency = b.latency
    try:
        for attempt in range(retries + 1):
            row = SCENARIO_FUNCTIONS[name](b, requests)
            row["attempt"] = attempt + 1
            if row["kills"] >= EXPECTED_KILLS.get(name, 0) or attempt == retries:
                return row
            print(f"{name}: the run ended before its fault ({row['notes']}); again at {2 * b.latency:g} s latency", flush=True)
            b.set_latency(2 * b.latency)
        raise AssertionError("unreachable")
    finally:
        if b.latency != base_latency:
            b.set_latency(base_latency)


def print_table(rows: list[dict]) -> None:
    base = next((row["wall_s"] for row in rows if row["scenario"] == "baseline"), None)
    header = (
        f"{'scenario':24}{'requests':>9}{'records':>9}{'rec/input':>10}{'dup':>5}{'miss':>5}{'failed':>7}{'billed 2x':>10}"
        f"{'retries/req':>12}{'resent':>7}{'orphan':>7}{'429s':>6}{'kills':>6}{'exits':>10}{'wall s':>8}{'/base':>7}"
    )
    print(header)
    for row in rows:
        retries = f"{row['retries_per_request']:.3f}" if row["retries_per_request"] is not None else "-"
        ratio = f"{row['wall_s'] / base:.2f}" if base else "-"
        exits = ",".join(str(code) for code in row["exits"]) or "-"
        print(
            f"{LABELS.get(row['scenario'], row['scenario']):24}{row['requests']:>9}{row['records']:>9}"
            f"{row['exactly_once'] / row['requests']:>10.4f}{row['duplicates']:>5}{row['missing']:>5}{row['failed']:>7}"
            f"{row['billed_twice']:>10}{retries:>12}{row['resent']:>7}{row['sent_after_driver_kill']:>7}{row['rate_limited']:>6}"
            f"{row['kills']:>6}{exits:>10}{row['wall_s']:>8.1f}{ratio:>7}"
        )
    for row in rows:
        facts = {k: row[k] for k in ("node_dead_s", "first_resend_s", "replaced_s", "replaced", "replaced_on_head", "coordinator_back_s") if k in row}
        extra = [f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in facts.items()]
        if row["scenario"] == "coordinator_kill" and row.get("rate"):
            extra.append(f"rayfan: {row['rate']}")
        if row.get("attempt", 1) > 1:
            extra.append(f"attempt {row['attempt']} at {row['latency_s']:g} s latency")
        if row["notes"] or row["errors"] or extra:
            errors = f" errors {row['errors']}" if row["errors"] else ""
            print(f"  {row['scenario']}: {'; '.join(row['notes'] + extra)}{errors}")


def health_checks(spec: str) -> dict[str, int]:
    """``--health-checks``: "fast" (``FAST_NODE_FAILURE``), "default" (Ray's: {}), or "P,T,N"."""
    if spec == "fast":
        return dict(FAST_NODE_FAILURE)
    if spec == "default":
        return {}
    try:
        period, timeout, threshold = (int(part) for part in spec.split(","))
    except ValueError:
        raise ValueError(f"--health-checks: fast, default or PERIOD_MS,TIMEOUT_MS,THRESHOLD, not {spec!r}") from None
    return {"health_check_period_ms": period, "health_check_timeout_ms": timeout, "health_check_failure_threshold": threshold}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--latency", type=float, default=0.2, help="fake endpoint latency per request, seconds")
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on each wait in a scenario, seconds")
    parser.add_argument("--retries", type=int, default=2, help="re-runs (at doubled latency) of a scenario whose run ended before its fault")
    parser.add_argument("--keep", type=Path, default=None, help="keep inputs, outputs and logs in this directory")
    parser.add_argument("--json-rows", type=Path, default=None, help="also write the rows here, one JSON object a line")
    parser.add_argument(
        "--health-checks",
        default="fast",
        metavar="fast|default|PERIOD_MS,TIMEOUT_MS,THRESHOLD",
        help="the GCS's node health checks: FAST_NODE_FAILURE (default), Ray's defaults, or these values",
    )
    args = parser.parse_args()
    chosen = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}")
    rows: list[dict] = []
    timed_out: list[str] = []
    began = time.monotonic()
    try:
        config = health_checks(args.health_checks)
    except ValueError as error:
        parser.error(str(error))
    with bench(
        args.latency, adapters=args.adapters, max_in_flight=args.max_in_flight, timeout=args.timeout, workdir=args.keep, system_config=config
    ) as b:
        checks = ", ".join(f"{k.removeprefix('health_check_')}={v}" for k, v in config.items()) or "Ray's defaults"
        print(f"cluster {b.address} up in {time.monotonic() - began:.1f} s (node health checks: {checks}), endpoint {b.base_url} (latency {args.latency} s), "
              f"{args.requests:,} requests, {args.adapters} adapters, {args.max_in_flight} in flight", flush=True)
        for name in chosen:
            try:
                rows.append(run_scenario(b, name, args.requests, args.retries))
            except TimeoutError as error:
                print(f"{name}: {error}", flush=True)
                timed_out.append(name)
                continue
            print(json.dumps(rows[-1]), flush=True)
            if args.json_rows is not None:
                with open(args.json_rows, "a") as out:
                    out.write(json.dumps(rows[-1]) + "\n")
    print()
    print_table(rows)
    print(f"bench wall {time.monotonic() - began:.1f} s (cluster start and stop included)")
    if timed_out:
        sys.exit(f"timed out: {', '.join(timed_out)}")


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
