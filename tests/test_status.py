"""``rayfan status``: what it gathers from a cluster with a run going, how it draws it, and
what it says when nothing runs. The command itself, on a fresh cluster and where none
answers, is run in ``tests/test_metrics.py``, whose cluster process it shares."""

from __future__ import annotations

import io
import textwrap
from datetime import datetime

import pytest
import ray

from actors.adapter.actor import AdapterInfo
from actors.adapter.stats import AdapterStats
from actors.adapter.settings import EndpointSettings
from actors.errors import TaskError
from actors.models import ChatTask
from actors.ratelimit.limits import Limits
from actors.ratelimit.protocol import CoordinatorSnapshot
from drivers.cluster import shared_limit, start_adapters
from drivers.fanout import fan_out
from drivers.mock import MockServer
from drivers.status import CLEAR_SCREEN, AdapterView, ClusterStatus, StatusExit, gather_status, print_status, render_status, run_status

MODEL = "gpt-4o-mini"
SECRET = "sk-proj-RECOGNIZABLE-status-0c4e"
AT = datetime(2026, 1, 2, 12, 0, 0)


@pytest.mark.usefixtures("ray_session")
def test_status_shows_the_scope_and_the_adapters_of_a_run_in_progress(server: MockServer) -> None:
    """Two adapters share a coordinator; six requests are done and three hang, so the run is
    still going when the status is gathered, in this process, from the cluster."""
    endpoint = EndpointSettings(base_url=server.base_url, api_key=SECRET)
    limit = shared_limit(2, endpoint=endpoint, model=MODEL, limits=Limits(rpm=6000, tpm=500_000))
    adapters = start_adapters(2, endpoint=endpoint, model=MODEL, limit=limit, max_in_flight=16)
    names = {ray.get(adapter.status.remote()).name for adapter in adapters}
    prompts = ["never answered [[mock hang]]"] * 3 + [f"question {i}" for i in range(6)]
    tasks = [ChatTask(custom_id=f"s{i}", messages=[{"role": "user", "content": text}], max_tokens=5) for i, text in enumerate(prompts)]
    running = fan_out(tasks, adapters, max_in_flight=16)
    try:
        done = [next(running)[1] for _ in range(6)]  # the six that answer; the hanging three stay open
        status = gather_status()
    finally:
        running.close()
        for adapter in adapters:
            ray.kill(adapter)
        ray.kill(limit.coordinator)
    assert all(result.ok for result in done)
    [scope] = [snap for snap in status.scopes if limit.scope is not None and snap.scope == limit.scope.name]
    assert scope.given == Limits(rpm=6000, tpm=500_000) and scope.runs == 1 and scope.clients == 2
    assert scope.idle_s is None  # the adapters' watches are parked there
    [(run, views)] = [(run, views) for run, views in status.runs().items() if {view.info.name for view in views} == names]
    assert sum(view.info.in_flight for view in views) == 3 and sum(view.info.running for view in views) == 3
    assert sum(view.done for view in views) == 6 and sum(view.stats.completed for view in views) == 6
    assert sum(view.stats.cost_usd for view in views) == pytest.approx(sum(result.cost_usd or 0.0 for result in done))
    screen = render_status(status, at=AT)
    assert scope.run_ids == [run] == [limit.run], "the scope names the run its adapters are named after"
    assert f"scope {scope.scope}: {MODEL} at {server.base_url.rstrip('/')}" in screen and f"run {run}: " in screen
    assert f"in scope {scope.scope}" in screen
    assert "RECOGNIZABLE" not in screen + status.model_dump_json()


def _snapshot(**fields: object) -> CoordinatorSnapshot:
    base: dict[str, object] = dict(
        scope="rayfan-limits-0123456789abcdef",
        endpoint="https://api.openai.com/v1",
        model=MODEL,
        given=Limits(rpm=5000),
        learned=Limits(rpm=10_000, tpm=2_000_000),
        limits=Limits(rpm=5000, tpm=2_000_000),
        requests_per_min=4321.4,
        tokens_per_min=1_234_567.0,
        requests_sent=12_000,
        reserved_tokens=3_000_000,
        used_tokens=2_500_000,
        requests_available=10.0,
        tokens_available=None,
        paused_for_s=3.25,
        burst_s=1.0,
        rate_limited=7,
        stopped=None,
        leases_outstanding=2,
        held_requests=5,
        held_tokens=100,
        clients=2,
        calls=900,
        restarted=False,
        runs=1,
        run_ids=["3f9a1c2e0b1d"],
        idle_s=None,
        idle_expiry_s=900.0,
    )
    return CoordinatorSnapshot.model_validate({**base, **fields})


def _adapter(index: int, in_flight: int, received: int, cost: float) -> AdapterView:
    info = AdapterInfo(
        name=f"rayfan-adapter-3f9a1c2e0b1d-{index}",
        model=MODEL,
        endpoint="https://api.openai.com/v1",
        received=received,
        in_flight=in_flight,
        running=in_flight,
        max_in_flight=128,
        capabilities=[],
        node=f"{index}abcdef0123456789",
    )
    stats = AdapterStats(completed=received - in_flight - 1, failed=1, retries=3, rate_limited=2, cost_usd=cost)
    return AdapterView(run="3f9a1c2e0b1d", info=info, stats=stats)


def test_the_screen_shows_each_scope_and_each_run() -> None:
    stopped = _snapshot(
        scope="rayfan-limits-fedcba9876543210", paused_for_s=0.0, stopped=TaskError(code="insufficient_quota", message="no credit"),
        idle_s=42.4, runs=0, run_ids=[], clients=0, given=Limits(), learned=Limits(), limits=Limits(),
    )
    status = ClusterStatus(scopes=[_snapshot(), stopped], adapters=[_adapter(1, 60, 5000, 1.5), _adapter(0, 64, 6001, 2.25)], silent=["rayfan-adapter-77-0"])
    assert render_status(status, at=AT) == textwrap.dedent(
        """\
        rayfan status at 12:00:00: 2 rate-limit scopes, 1 run with 2 adapters

        scope rayfan-limits-0123456789abcdef: gpt-4o-mini at https://api.openai.com/v1
          limits   RPM 5,000 (given 5,000, learned 10,000);  TPM 2,000,000 (given none, learned 2,000,000);  bursts of at most 1 s of the limit
          rate     4,321 requests/min, 1,234,567 tokens/min (last minute)
          tokens   3,000,000 reserved, 2,500,000 used as the server counts (12,000 requests)
          state    PAUSED until 12:00:03 (3.2 s more); 7 answered 429
          users    1 run (3f9a1c2e0b1d), 2 adapters heard from in the last minute; in use

        scope rayfan-limits-fedcba9876543210: gpt-4o-mini at https://api.openai.com/v1
          limits   RPM none (given none, learned none);  TPM none (given none, learned none);  bursts of at most 1 s of the limit
          rate     4,321 requests/min, 1,234,567 tokens/min (last minute)
          tokens   3,000,000 reserved, 2,500,000 used as the server counts (12,000 requests)
          state    STOPPED: insufficient_quota (nothing is sent; the next run reopens it); 7 answered 429
          users    0 runs, 0 adapters heard from in the last minute; idle 42 s (exits at 900 s)

        run 3f9a1c2e0b1d: gpt-4o-mini at https://api.openai.com/v1, in scope rayfan-limits-0123456789abcdef
          adapter  node       in flight  sending      done  failed  retries   429s        cost
          0        0abcdef0          64       64     5,937       1        3      2     $2.2500
          1        1abcdef0          60       60     4,940       1        3      2     $1.5000
          total                     124      124    10,877       2        6      4     $3.7500

        not answering within 5 s (restarting, or exiting): rayfan-adapter-77-0"""
    )


def test_nothing_running_is_one_line_and_its_own_exit_code() -> None:
    out = io.StringIO()
    assert print_status(ClusterStatus(), out) == StatusExit.NOTHING_RUNNING
    assert out.getvalue() == "no rayfan rate-limit scope or run on this Ray cluster\n"


class _Terminal(io.StringIO):
    """A terminal whose user presses Ctrl-C as the ``screens``-th screen is flushed."""

    def __init__(self, screens: int) -> None:
        super().__init__()
        self.screens_left = screens

    def isatty(self) -> bool:
        return True

    def flush(self) -> None:
        self.screens_left -= 1
        if self.screens_left == 0:
            raise KeyboardInterrupt


@pytest.mark.usefixtures("ray_session")
def test_watch_redraws_the_screen_until_ctrl_c(server: MockServer, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = EndpointSettings(base_url=server.base_url, api_key=SECRET)
    limit = shared_limit(1, endpoint=endpoint, model=MODEL, limits=Limits(rpm=1234))
    terminal = _Terminal(screens=3)
    monkeypatch.setattr("sys.stdout", terminal)
    try:
        assert run_status(None, watch_s=0.01) == StatusExit.SHOWN
    finally:
        ray.kill(limit.coordinator)
    screens = terminal.getvalue().split(CLEAR_SCREEN)
    assert screens[0] == "" and len(screens) == 4, "the screen is cleared before each of the three draws"
    assert limit.scope is not None and all(f"scope {limit.scope.name}:" in screen and "RPM 1,234" in screen for screen in screens[1:])
