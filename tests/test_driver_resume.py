"""A real ``rayfan run`` process killed mid-run: kill -9 then resume, and Ctrl-C.

The process joins this session's Ray cluster (``--address``), so its actors die with it
and no raylet is left behind, and it sends to the session's fake server over HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import ray
from ray.util.state import list_actors

from actors.ratelimit.coordinator import NAMESPACE
from drivers.cli import main
from drivers.mock import MockServer
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.usefixtures("ray_session")

REQUESTS = 60


def write_prompts(path: Path) -> dict[str, str]:
    prompts = {f"k{i}": f"resume test prompt {i}" for i in range(REQUESTS)}
    path.write_text("".join(json.dumps({"custom_id": key, "prompt": text}) + "\n" for key, text in prompts.items()))
    return prompts


def start_rayfan(source: Path, out: Path, server: MockServer) -> subprocess.Popen[str]:
    """Its stdout and stderr go to files beside the output (a full pipe would block it)."""
    command = [sys.executable, "-m", "drivers.cli", "run", str(source), "-o", str(out), "--base-url", server.base_url]
    command += ["--address", ray.get_runtime_context().gcs_address, "--adapters", "1", "--max-in-flight", "4"]
    env = {**os.environ, "OPENAI_API_KEY": TEST_KEY}
    with open(out.with_suffix(".stdout"), "w") as stdout, open(out.with_suffix(".stderr"), "w") as stderr:
        return subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr, text=True)


def output_of(process: subprocess.Popen[str], out: Path) -> tuple[str, str]:
    process.wait(timeout=60)
    return out.with_suffix(".stdout").read_text(), out.with_suffix(".stderr").read_text()


def wait_for_records(out: Path, count: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not (out.exists() and out.read_bytes().count(b"\n") >= count):
        if process.poll() is not None:
            pytest.fail(f"rayfan exited early with {process.returncode}: {output_of(process, out)}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"rayfan wrote fewer than {count} records in 60 s")
        time.sleep(0.05)


def complete_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]


def sent_ok(server: MockServer) -> Counter[str]:
    return Counter(e.body["messages"][-1]["content"] for e in server.requests() if e.body and e.outcome == "ok")


def wait_until_only_this_job_has_actors() -> None:
    """The killed driver's adapters die with it: none may be left running on the cluster.
    The scope's rate-limit coordinator is detached on purpose (it outlives runs) and is not counted."""
    context = ray.get_runtime_context()
    alive = [("state", "=", "ALIVE")]
    deadline = time.monotonic() + 30

    def orphans() -> list:
        actors = list_actors(context.gcs_address, filters=alive)
        return [a for a in actors if a.job_id != context.get_job_id() and a.ray_namespace != NAMESPACE]

    while left := orphans():
        assert time.monotonic() < deadline, f"actors of the killed driver still alive: {left}"
        time.sleep(0.2)


def test_kill_9_mid_run_then_resume_gives_one_record_per_input_and_resends_no_success(
    tmp_path: Path, server: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    prompts = write_prompts(source)
    server.configure(latency_s=0.1)
    process = start_rayfan(source, out, server)
    wait_for_records(out, 10, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL

    before = complete_records(out)
    assert 10 <= len(before) < REQUESTS, "killed mid-run"
    done_before = {r["custom_id"] for r in before if r["error"] is None}
    with open(out, "a") as torn:
        torn.write('{"id": "batch_req_torn", "custom_id": "k')  # what a kill mid-write leaves
    wait_until_only_this_job_has_actors()

    server.configure(latency_s=0.0)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    assert main(["run", str(source), "-o", str(out), "--base-url", server.base_url]) == 0

    records = complete_records(out)
    assert out.read_bytes().endswith(b"\n") and len(records) == len(out.read_bytes().splitlines()), "torn line repaired"
    assert sorted(r["custom_id"] for r in records) == sorted(prompts), "exactly one record per input"
    assert all(r["error"] is None for r in records)
    sent = sent_ok(server)
    assert set(sent) == set(prompts.values())
    assert {key: sent[prompts[key]] for key in done_before} == {key: 1 for key in done_before}, (
        "a request whose success was recorded before the kill was never sent again"
    )
    paid_twice = sum(count > 1 for count in sent.values())
    assert paid_twice <= 2 * 4, "at most the 4 open at the endpoint, plus what finished in the last 0.1 s (4 per 0.1 s here)"


def test_ctrl_c_writes_what_was_in_flight_and_exits_130_with_how_to_resume(
    tmp_path: Path, server: MockServer
) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_prompts(source)
    server.configure(latency_s=0.2)
    process = start_rayfan(source, out, server)
    wait_for_records(out, 4, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = output_of(process, out)
    assert process.returncode == 130, stderr
    assert f"interrupted: run the same command again to resume into {out}" in stdout

    records = complete_records(out)
    assert len(records) == len(out.read_bytes().splitlines()) < REQUESTS, "stopped early, no torn line"
    assert [r for r in records if r["error"] is not None] == [], "a press cuts no result between its arrival and its record"
    recorded = {r["rayfan"]["line"] for r in records}
    reached_server = {int(p.rsplit(" ", 1)[1]) + 1 for p in sent_ok(server)}
    assert recorded == reached_server, "every request that reached the server was waited for and written"


def test_ctrl_c_counts_the_requests_abandoned_in_flight(tmp_path: Path, server: MockServer) -> None:
    """Requests that never answer within the drain are named in the summary, and the next run sends them."""
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [{"custom_id": f"h{i}", "prompt": f"hanging prompt {i} [[mock hang]]"} for i in range(3)]
    lines += [{"custom_id": f"ok{i}", "prompt": f"quick prompt {i}"} for i in range(2)]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    process = start_rayfan(source, out, server)
    wait_for_records(out, 2, process)
    deadline = time.monotonic() + 60
    while sum(e.outcome == "pending" for e in server.requests()) < 3:  # the three hangs are open at the server
        assert time.monotonic() < deadline, server.requests()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = output_of(process, out)
    assert process.returncode == 130, stderr
    assert "abandoned: 3 requests still open at the endpoint" in stdout and "the same command sends them again" in stdout
    assert sorted(r["custom_id"] for r in complete_records(out)) == ["ok0", "ok1"]
