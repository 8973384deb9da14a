"""``rayfan run --batch-api`` against the fake endpoint: a 10,000-request file, and kill -9 at
three moments, each followed by a resume.

    python bench/batch_api.py [--requests 10000] [--max-requests 2500] [--json-rows FILE]

Starts a local Ray and the fake endpoint in this process, and runs each ``rayfan run ...
--batch-api --address <that Ray>`` in a subprocess of its own, on a fresh output. The input
alternates two models, so it makes at least two batch files. Rows:

* ``clean``: one run, the default limits (50,000 requests a file): files and batches made,
  wall time (the driver's own, and the process's, Python and Ray's start-up included), the
  driver's peak RSS and its peak private memory (RssAnon, sampled every 20 ms: the RSS
  also counts pages of Ray's shared object store that parts in transit touched).
* ``clean_split``: the same with ``--batch-max-requests``: more files, uploaded and
  downloaded in parallel over the adapters.
* ``kill_uploaded``: the endpoint makes each batch but holds its answer: the driver has
  uploaded its files and asked, and has not heard. kill -9 once the endpoint has made every
  batch and the journal says ``submitting``: only a search of the endpoint's batches can
  find them.
* ``kill_submitted``: the endpoint holds the batches in progress; kill -9 once the journal
  says every batch is ``submitted``.
* ``kill_merging``: the endpoint sends half of each output file and holds the rest; kill -9
  once the output has records and the journal says every batch has ended.

Each kill waits for its conditions (polled every 20 ms), never for a time, and is followed
by the same command with the endpoint's holds released, run to the end. Every row counts
records per input (each must have exactly one) and submissions per custom_id (from the
endpoint's log of the batches it made: each must be exactly one).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402

from drivers.batchapi.journal import Journal  # noqa: E402
from drivers.mock import MockServer  # noqa: E402
from drivers.mock.batches import MockBatchConfig  # noqa: E402

KEY = "sk-bench-not-a-key"
POLL_S = "0.1"
WAIT_S = 300.0
DRIVER = """
import resource, sys, threading, time
from drivers.cli import main
peak_anon = [0]
def sample():
    while True:
        with open("/proc/self/status") as status:
            anon = next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))
        peak_anon[0] = max(peak_anon[0], anon)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
code = main(sys.argv[1:])
print("peak_rss_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, peak_anon[0])
sys.exit(code)
"""
"""The driver, then its peak RSS and its peak private (anonymous) memory, in KiB: the RSS also
counts the pages of Ray's shared object store the driver has touched, which it does not own."""


def write_input(path: Path, requests: int) -> list[str]:
    keys = [f"req-{i}" for i in range(requests)]
    with open(path, "w", encoding="utf-8") as out:
        for i, key in enumerate(keys):
            messages = [{"role": "user", "content": f"batch benchmark prompt {i}"}]
            body = {"model": ("gpt-4o-mini", "gpt-4o")[i % 2], "messages": messages, "max_tokens": 16}
            out.write(json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n")
    return keys


class Bench:
    def __init__(self, workdir: Path, source: Path, keys: list[str], server: MockServer, address: str) -> None:
        self.workdir, self.source, self.keys, self.server, self.address = workdir, source, keys, server, address

    def start(self, out: Path, *args: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-c", DRIVER, "run", str(self.source), "-o", str(out), "--base-url", self.server.base_url]
        command += ["--address", self.address, "--adapters", "2", "--batch-api", "--batch-poll", POLL_S, *args]
        log = open(out.with_suffix(f".{time.monotonic_ns()}.log"), "w")
        return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "OPENAI_API_KEY": KEY}, stdout=log, stderr=subprocess.STDOUT, text=True)

    def finish(self, out: Path, *args: str) -> tuple[int, float, str]:
        """Run to the end: exit code, wall seconds, its output."""
        started = time.monotonic()
        process = self.start(out, *args)
        code = process.wait(timeout=WAIT_S)
        log = sorted(out.parent.glob(out.with_suffix("").name + ".*.log"))[-1].read_text()
        return code, time.monotonic() - started, log

    def kill_when(self, out: Path, condition: Callable[[], bool], *args: str) -> float:
        process = self.start(out, *args)
        started = time.monotonic()
        while not condition():
            if process.poll() is not None:
                sys.exit(f"the run ended ({process.returncode}) before the moment to kill it came")
            if time.monotonic() - started > WAIT_S:
                process.kill()
                sys.exit("the moment to kill never came")
            time.sleep(0.02)
        process.kill()  # SIGKILL
        process.wait()
        return time.monotonic() - started

    def row(self, scenario: str, out: Path, **extra: Any) -> dict[str, Any]:
        records = [json.loads(line) for line in out.read_text().splitlines()]
        per_input = Counter(r["custom_id"] for r in records)
        submitted = Counter(key for batch in self.server.batches.submissions() for key in batch.custom_ids)
        journal = Journal.read(out)
        return {
            "scenario": scenario,
            "requests": len(self.keys),
            "files": len(journal.state.batches) if journal else 0,
            "batches": len(self.server.batches.submissions()),
            "records": len(records),
            "exactly_once": sum(per_input[key] == 1 for key in self.keys),
            "failed": sum(r["error"] is not None for r in records),
            "submitted_once": sum(submitted[key] == 1 for key in self.keys),
            "submitted_twice": sum(count > 1 for count in submitted.values()),
            **extra,
        }


def stages(out: Path) -> list[str]:
    journal = Journal.read(out)
    return [entry.stage.value for entry in journal.state.batches] if journal else []


def ended(out: Path) -> bool:
    journal = Journal.read(out)
    entries = journal.state.batches if journal else []
    return bool(entries) and all(e.batch is not None and e.batch.ended for e in entries if e.stage.value != "done")


def run_scenario(bench: Bench, scenario: str, split: list[str]) -> dict[str, Any]:
    out = bench.workdir / f"{scenario}.jsonl"
    bench.server.reset()
    server = bench.server
    if scenario.startswith("clean"):
        code, wall, log = bench.finish(out, *(split if scenario == "clean_split" else []))
        driver_wall = float(next(line for line in log.splitlines() if line.startswith("wall time:")).split()[2].rstrip("s"))
        _, peak, anon = next(line for line in log.splitlines() if line.startswith("peak_rss_kib")).split()
        return bench.row(
            scenario, out, exits=[code], wall_s=round(wall, 2), driver_wall_s=driver_wall, peak_rss_mib=round(int(peak) / 1024, 1), peak_anon_mib=round(int(anon) / 1024, 1)
        )
    hold, moment = {
        "kill_uploaded": (
            MockBatchConfig(hold_create_answer=True),
            lambda: len(server.batches.submissions()) == len(stages(out)) > 0 and set(stages(out)) == {"submitting"},
        ),
        "kill_submitted": (MockBatchConfig(hold=True), lambda: bool(stages(out)) and set(stages(out)) == {"submitted"}),
        "kill_merging": (MockBatchConfig(hold_download=True), lambda: out.exists() and out.stat().st_size > 0 and ended(out)),
    }[scenario]
    server.configure(batch=hold)
    killed_after = bench.kill_when(out, moment, *split)
    records_at_kill = len(out.read_text().splitlines()) if out.exists() else 0
    batches_at_kill = len(server.batches.submissions())
    server.configure(batch=MockBatchConfig())
    code, wall, _ = bench.finish(out, *split)
    return bench.row(
        scenario,
        out,
        exits=[-9, code],
        killed_after_s=round(killed_after, 2),
        records_at_kill=records_at_kill,
        batches_at_kill=batches_at_kill,
        resume_wall_s=round(wall, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--max-requests", type=int, default=2_500, help="--batch-max-requests of the clean_split and kill rows")
    parser.add_argument("--scenarios", default="clean,clean_split,kill_uploaded,kill_submitted,kill_merging")
    parser.add_argument("--json-rows", type=Path, default=None, help="also write each row as a JSON line here")
    args = parser.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="rayfan-batch-bench-") as scratch, MockServer() as server:
            workdir = Path(scratch)
            keys = write_input(workdir / "in.jsonl", args.requests)
            bench = Bench(workdir, workdir / "in.jsonl", keys, server, ray.get_runtime_context().gcs_address)
            split = ["--batch-max-requests", str(args.max_requests)]
            for scenario in args.scenarios.split(","):
                row = run_scenario(bench, scenario, split)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json_rows is not None:
                    with open(args.json_rows, "a") as rows_file:
                        rows_file.write(json.dumps(row) + "\n")
    finally:
        ray.shutdown()
    bad = [row["scenario"] for row in rows if row["exactly_once"] != row["requests"] or row["submitted_once"] != row["requests"]]
    if bad:
        sys.exit(f"a record lost or doubled, or a request submitted twice, in: {', '.join(bad)}")


if __name__ == "__main__":
    main()
