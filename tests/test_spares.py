"""Spare adapters on a Ray that outlives its runs (``actors/adapter/spare.py``, ``drivers/spares.py``).

The runs are ``rayfan run`` processes joining this session's Ray, as after ``ray start
--head``: each leaves spares, the next takes them. What must hold: a spare is taken by one
run only, never one of other code, exits when idle, and ends with its run's driver, even one
killed with ``kill -9``, without finishing what it had open (a re-run sends that again).
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.adapter.settings import EndpointSettings
from actors.adapter.spare import SPARE_NAME_PREFIX, SpareAdapter
from actors.ratelimit.coordinator import NAMESPACE
from drivers.adapter_group import AdapterRecipe
from drivers.mock import MockServer
from drivers.spares import leave_spares, spare_identity, spare_names, take_spares
from drivers.status import gather_status, render_status
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.usefixtures("ray_session")
WAIT_S = 120.0


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S:g} s: {what}"
        time.sleep(0.05)


def _untaken(name: str) -> bool | None:
    """Whether the spare is waiting untaken; None once it has ended."""
    try:
        node: str | None = ray.get(ray.get_actor(name, namespace=NAMESPACE).waiting.remote(), timeout=60)
    except (ValueError, RayActorError):
        return None
    return node is not None


def _waiting_spares(at_least: int) -> list[str]:
    """Spares of this code, once ``at_least`` of them are up and untaken (leaving more if needed)."""
    leave_spares(["SPREAD"] * at_least)
    waiting: list[str] = []

    def enough() -> bool:
        waiting[:] = [name for name in spare_names(spare_identity()) if _untaken(name)]
        return len(waiting) >= at_least

    _wait_for(enough, f"{at_least} spares up")
    return waiting


def _foreign_spare(idle_s: float = 600.0) -> str:
    """A spare whose name says other code made it."""
    name = f"{SPARE_NAME_PREFIX}000000000000-{uuid.uuid4().hex[:8]}"
    spare_class: Any = SpareAdapter
    spare_class.options(name=name, namespace=NAMESPACE, lifetime="detached").remote(idle_s=idle_s)
    return name


def _rayfan(source: Path, out: Path, server: MockServer, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "drivers.cli", "run", str(source), "-o", str(out), "--base-url", server.base_url]
    command += ["--address", ray.get_runtime_context().gcs_address, "--adapters", "2", "-v", *extra]
    env = {**os.environ, "OPENAI_API_KEY": TEST_KEY, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _prompts(path: Path, count: int) -> None:
    path.write_text("".join(json.dumps({"custom_id": f"k{i}", "prompt": f"spare prompt {i}"}) + "\n" for i in range(count)))


def test_a_run_takes_the_spares_the_run_before_left(tmp_path: Path, server: MockServer) -> None:
    taken_before = _waiting_spares(2)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _prompts(source, 8)

    run = _rayfan(source, out, server)
    stdout, stderr = run.communicate(timeout=300)

    assert run.returncode == 0, stderr[-3000:]
    assert "adapters: 2 of 2 were spares" in stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["custom_id"] for r in records if r["error"] is None) == [f"k{i}" for i in range(8)]
    now_waiting = _waiting_spares(2)  # the run left spares for the next one
    assert len([name for name in taken_before if _untaken(name) is None]) >= 2, "the two it took ended with it"
    assert set(now_waiting) - set(taken_before), "new spares, not the taken ones back"


def test_a_taken_spare_ends_with_its_driver_killed_and_drops_what_it_had_open(tmp_path: Path, server: MockServer) -> None:
    _waiting_spares(2)
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _prompts(source, 6)
    server.configure(latency_s=300.0)  # nothing is answered before the kill
    run = _rayfan(source, out, server)
    try:
        _wait_for(lambda: len(server.requests()) == 6, "all six requests at the endpoint")
        taken = [name for name in spare_names(spare_identity()) if _untaken(name) is False]
        assert len(taken) == 2, f"the run's two adapters are spares it took: {taken}"
    finally:
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=60)

    _wait_for(lambda: all(_untaken(name) is None for name in taken), "the taken spares ended after the kill")
    _wait_for(lambda: all(entry.outcome != "pending" for entry in server.requests()), "every request closed")
    assert {entry.outcome for entry in server.requests()} == {"disconnected"}, "dropped, never finished"


def test_a_spare_of_other_code_is_never_taken() -> None:
    foreign = _foreign_spare()
    _wait_for(lambda: _untaken(foreign) is True, "the foreign spare up")
    ours = _waiting_spares(1)
    recipe = AdapterRecipe(run="t" + uuid.uuid4().hex[:11], endpoint=EndpointSettings(api_key=TEST_KEY), model="gpt-4o-mini", retry=None, limit=None, prices=None)

    taken = take_spares(recipe, [4] * 10, ["SPREAD"] * 10)  # more than there are spares: every spare of this code is taken

    try:
        assert len(taken) >= len(ours)
        assert _untaken(foreign) is True
    finally:
        for handle in [*taken.values(), ray.get_actor(foreign, namespace=NAMESPACE)]:
            ray.kill(handle)


def test_a_spare_nobody_takes_exits_when_idle() -> None:
    name = _foreign_spare(idle_s=0.5)
    _wait_for(lambda: _untaken(name) is None, "the idle spare gone")


def test_of_two_runs_asking_for_one_spare_only_one_gets_it() -> None:
    name = _foreign_spare()
    spare = ray.get_actor(name, namespace=NAMESPACE)
    job = ray.get_runtime_context().get_job_id()
    arguments = {"endpoint": EndpointSettings(api_key=TEST_KEY), "model": "gpt-4o-mini", "name": "rayfan-adapter-race-0"}
    try:
        first, second = ray.get([spare.take.remote(job=job, **arguments), spare.take.remote(job=job, **arguments)], timeout=120)
        assert (first is None) != (second is None), (first, second)
        info = first or second
        assert info.name == "rayfan-adapter-race-0"
    finally:
        ray.kill(spare)


def test_a_spare_asked_for_by_a_driver_already_gone_is_not_taken_and_exits() -> None:
    name = _foreign_spare()
    spare = ray.get_actor(name, namespace=NAMESPACE)
    with pytest.raises(RayTaskError, match="has ended"):
        ray.get(spare.take.remote(job="7f000000", endpoint=EndpointSettings(api_key=TEST_KEY), model="gpt-4o-mini"), timeout=120)
    _wait_for(lambda: _untaken(name) is None, "the spare gone")


def test_status_counts_spares_waiting_and_shows_a_taken_one_as_its_runs_adapter() -> None:
    waiting, taken = _foreign_spare(), _foreign_spare()
    _wait_for(lambda: _untaken(waiting) is True and _untaken(taken) is True, "both spares up")
    before = gather_status()
    handle = ray.get_actor(taken, namespace=NAMESPACE)
    job = ray.get_runtime_context().get_job_id()
    try:
        ray.get(handle.take.remote(job=job, endpoint=EndpointSettings(api_key=TEST_KEY), model="gpt-4o-mini", name="rayfan-adapter-shown-0"), timeout=120)
        after = gather_status()
    finally:
        for name in (waiting, taken):
            ray.kill(ray.get_actor(name, namespace=NAMESPACE))

    assert before.idle_spares >= 2 and after.idle_spares >= 1, "spares of any code, this test's untaken one at least"
    assert [view.info.name for view in after.runs()["shown"]] == ["rayfan-adapter-shown-0"]
    assert re.search(r"\n\d+ spare adapters? started, waiting for the next run", render_status(after, at=datetime.now()))


def test_an_adapter_placed_on_a_node_takes_only_a_spare_on_that_node() -> None:
    ours = _waiting_spares(1)
    here = ray.get_runtime_context().get_node_id()
    elsewhere = NodeAffinitySchedulingStrategy("ab" * 28, soft=True)  # a node with no spare (nor any actor)
    recipe = AdapterRecipe(run="n" + uuid.uuid4().hex[:11], endpoint=EndpointSettings(api_key=TEST_KEY), model="gpt-4o-mini", retry=None, limit=None, prices=None)

    assert take_spares(recipe, [4], [elsewhere]) == {}
    taken = take_spares(recipe, [4], [NodeAffinitySchedulingStrategy(here, soft=True)])

    try:
        assert list(taken) == [0] and len(ours) >= 1
        assert ray.get(taken[0].status.remote(), timeout=60).node == here
    finally:
        for handle in taken.values():
            ray.kill(handle)
