"""``rayfan run --rpm/--tpm``: the driver shares the scope's coordinator and reports the rate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import ray

from actors import OpenAIAdapter
from actors.adapter.settings import EndpointSettings
from actors.ratelimit.coordinator import NAMESPACE, scope_name
from actors.ratelimit.limits import Limits
from actors.ratelimit.specs import CoordinatedLimitSpec
from drivers.cli import main
from drivers.cluster import shared_limit
from drivers.mock import MockServer
from drivers.rate_report import RateReport, close_and_report
from drivers.summary import ExitCode

KEY = "sk-test-driver-scope"


def test_rate_report_renders_achieved_rate_against_the_limits() -> None:
    report = RateReport(limits=Limits(rpm=1200, tpm=None), requests=2400, rate_limited=3, tokens=60_000, wall_s=120.0)
    assert report.render() == (
        "rate: 1,200 requests/min (1.00 of the 1,200 RPM limit), 30,000 tokens/min; 3 answered 429 (0.1% of 2400 requests)"
    )
    nothing = RateReport(limits=Limits(), requests=0, rate_limited=0, tokens=0, wall_s=0.0, burst_s=1.0)
    assert nothing.render() == "rate: 0 requests/min, 0 tokens/min; 0 answered 429 (0.0% of 0 requests)"
    metered = report.model_copy(update={"burst_s": 0.5})
    assert metered.render().endswith("(0.1% of 2400 requests); bursts of at most 0.5 s of the limit")


def test_a_run_shorter_than_a_minute_is_counted_against_what_the_limits_allow_in_that_time() -> None:
    """300 requests in 2 s under 600 RPM is 9,000/min, yet the server's minute bucket allowed it."""
    burst = RateReport(limits=Limits(rpm=600, tpm=100_000), requests=300, rate_limited=0, tokens=14_470, wall_s=2.0, burst_s=60.0)
    assert burst.render() == (
        "rate: 300 requests and 14,470 tokens in 2.0 s (the limits allow 620 requests and 103,333 tokens in that time,"
        " 60 s of them at once); 0 answered 429 (0.0% of 300 requests)"
    )
    metered = burst.model_copy(update={"limits": Limits(rpm=600, tpm=None), "burst_s": 1.0})
    assert "(the limits allow 30 requests in that time, 1 s of them at once)" in metered.render(), "over it, plainly"
    unlimited = burst.model_copy(update={"limits": Limits(), "burst_s": None})
    assert unlimited.render() == "rate: 300 requests and 14,470 tokens in 2.0 s; 0 answered 429 (0.0% of 300 requests)"


@pytest.mark.usefixtures("ray_session")
def test_run_with_limits_uses_the_coordinator_and_prints_the_rate(
    tmp_path: Path, server: MockServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server.configure(rpm_limit=600, tpm_limit=50_000)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"question number {i}"}) + "\n" for i in range(60)))
    out = tmp_path / "out.jsonl"
    try:
        code = main(["run", str(source), "-o", str(out), "--base-url", server.base_url, "--rpm", "600", "--tpm", "40000", "--max-tokens", "8"])
        coordinator = ray.get_actor(scope_name(server.base_url, KEY, "gpt-4o-mini"), namespace=NAMESPACE)
        snap = ray.get(coordinator.snapshot.remote())
    finally:
        ray.kill(ray.get_actor(scope_name(server.base_url, KEY, "gpt-4o-mini"), namespace=NAMESPACE))
    assert code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 60 and all(record["error"] is None for record in records)
    assert snap.given == Limits(rpm=600, tpm=40_000)
    assert snap.learned == Limits(rpm=600, tpm=50_000)  # from the server's headers
    assert snap.limits == Limits(rpm=600, tpm=40_000)  # the lower of each
    rate_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("rate:"))
    assert rate_line.startswith("rate: 60 requests and ") and rate_line.endswith("; 0 answered 429 (0.0% of 60 requests)")
    # a short run against the limits in force (given RPM, the lower TPM) and the server's minute
    # bucket: what 600 RPM and 40,000 TPM allow in the run's printed time plus 60 s, however long
    # a loaded machine made the run (its time is printed to a tenth of a second)
    shown = re.search(r"in ([\d.]+) s \(the limits allow ([\d,]+) requests and ([\d,]+) tokens in that time, ([\d.]+) s of them at once\)", rate_line)
    assert shown is not None, rate_line
    wall_s, requests, tokens, burst_s = float(shown[1]), int(shown[2].replace(",", "")), int(shown[3].replace(",", "")), float(shown[4])
    assert 59 <= burst_s <= 60, "the server's minute bucket, as its headers gave it (59.9 s on a loaded box)"
    assert abs(requests - 600 * (wall_s + burst_s) / 60) <= 1 and abs(tokens - 40_000 * (wall_s + burst_s) / 60) <= 40, rate_line


@pytest.mark.usefixtures("ray_session")
def test_requests_wait_out_429s_until_the_deadline_then_a_rerun_resumes(
    tmp_path: Path, server: MockServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A scope that never recovers: two requests are answered 429 every time. They neither
    fail nor end the run; --deadline does, with exit code 4 and no record for them."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY + "-deadline")
    source = tmp_path / "in.jsonl"
    prompts = [f"question number {i}" for i in range(6)] + [f"blocked {i} [[mock status=429 retry_after_ms=200]]" for i in range(2)]
    source.write_text("".join(json.dumps({"custom_id": f"r{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    out = tmp_path / "out.jsonl"
    scope = scope_name(server.base_url, KEY + "-deadline", "gpt-4o-mini")
    try:
        code = main(["run", str(source), "-o", str(out), "--base-url", server.base_url, "--rpm", "6000", "--deadline", "3"])
    finally:
        ray.kill(ray.get_actor(scope, namespace=NAMESPACE))
    assert code == ExitCode.DEADLINE
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(record["custom_id"] for record in records) == [f"r{i}" for i in range(6)]
    assert all(record["error"] is None for record in records)
    blocked = [entry for entry in server.requests() if entry.body and "blocked" in entry.body["messages"][0]["content"]]
    assert len(blocked) > 2 * 5, "sent again and again, past the 5 attempts a failure gets"
    assert "deadline reached: run the same command again" in capsys.readouterr().out


@pytest.mark.usefixtures("ray_session")
def test_close_and_report_skips_an_adapter_that_died(server: MockServer) -> None:
    endpoint = EndpointSettings(base_url=server.base_url, api_key="sk-test-dead")
    limit: CoordinatedLimitSpec = shared_limit(2, endpoint=endpoint, model="gpt-4o-mini", limits=Limits(rpm=600))
    alive, dead = [OpenAIAdapter.remote(endpoint=endpoint, limit=limit) for _ in range(2)]
    try:
        ray.get(alive.run.remote({"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}))
        ray.kill(dead)
        report = close_and_report([alive, dead], limit, wall_s=1.0)
    finally:
        ray.kill(alive)
        ray.kill(limit.coordinator)
    assert report.requests == 1 and report.limits == Limits(rpm=600)
