"""rayfan's metrics on the Prometheus endpoint of a real local Ray started with metrics on,
and ``rayfan status`` as a command on a fresh cluster.

The cluster runs in a process of its own (``tests/metrics_cluster.py``) against the fake
server; the metrics test scrapes ``http://127.0.0.1:PORT/metrics`` until every series it
expects has the value the results add up to, or fails after a generous overall timeout.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.mock import MockConfig, MockServer
from drivers.status import StatusExit
from tests.metrics_cluster import KEY, MODEL, RPM

SCRAPE_FOR_S = 45.0
"""How long the metrics get to show up once the run is over (a second or two, unloaded)."""
GIVE_UP_S = 240.0
"""The cluster process is killed after this long: Ray's start and the run take about 10 s
here, a minute beside a CPU hog; only a hung process gets near it."""
_SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Scrape:
    """One Prometheus text exposition, summed over the series that match."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.series: list[tuple[str, dict[str, str], float]] = []
        for line in text.splitlines():
            match = _SERIES.match(line.strip())
            if match and not line.startswith("#"):
                labels = dict(_LABEL.findall(match["labels"] or ""))
                self.series.append((match["name"], labels, float(match["value"])))

    def total(self, name: str, **labels: str) -> float | None:
        """The sum of ``name`` over the series with these labels; None if there is none."""
        values = [value for found, have, value in self.series if found == name and labels.items() <= have.items()]
        return sum(values) if values else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def metrics_cluster(mock_server: MockServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict[str, Any]]]:
    """The cluster process (one for this module: Ray takes seconds to start), its metrics
    port, and what its run gave."""
    mock_server.reset()
    mock_server.configure(**MockConfig().model_dump())
    port = _free_port()
    errors = tmp_path_factory.mktemp("metrics") / "stderr.txt"
    with open(errors, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.metrics_cluster", str(port), mock_server.base_url],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    guard = threading.Timer(GIVE_UP_S, process.kill)  # a hung cluster must not hang the suite
    guard.start()
    try:
        assert process.stdout is not None and process.stdin is not None
        line = process.stdout.readline()
        assert line, f"the cluster process ended early: {errors.read_text()[-3000:]}"
        yield port, json.loads(line)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        guard.cancel()
        if process.stdout is not None:
            process.stdout.close()


Expectation = tuple[str, dict[str, str], Callable[[float], bool]]
"""A metric, the labels its series must have, and what their total must satisfy."""


def scrape_until(port: int, expected: dict[str, Expectation], within_s: float) -> tuple[dict[str, float | None], list[str]]:
    """Scrape until every expectation has held in some scrape; those that never did (with
    the last total seen), and every text scraped. A gauge can be missing from one scrape
    while its worker is starved of CPU past the agent's retention, so holding once is enough;
    counters only grow, and the values expected of them are final."""
    deadline = time.monotonic() + within_s
    unmet: dict[str, float | None] = {label: None for label in expected}
    texts: list[str] = []
    while unmet and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                scrape = Scrape(response.read().decode())
        except (urllib.error.URLError, ConnectionError):
            scrape = Scrape("")
        texts.append(scrape.text)
        for label in list(unmet):
            name, labels, holds = expected[label]
            total = scrape.total(name, **labels)
            if total is not None and holds(total):
                del unmet[label]
            elif total is not None:
                unmet[label] = total
        time.sleep(0.25)  # Ray exports once a second: a scrape every quarter of it
    return unmet, texts


def test_adapters_and_coordinators_export_their_metrics(metrics_cluster: tuple[int, dict[str, Any]]) -> None:
    port, ran = metrics_cluster
    assert ran["outcomes"] == {"ok": 10, "bad_request": 1}  # the batch did what the test expects of it

    def equals(value: float) -> Callable[[float], bool]:
        return lambda total: total == pytest.approx(value)

    expected: dict[str, Expectation] = {
        "ok requests": ("ray_rayfan_requests_total", {"model": MODEL, "outcome": "ok"}, equals(10)),
        "failed requests": ("ray_rayfan_requests_total", {"outcome": "bad_request"}, equals(1)),
        "retries": ("ray_rayfan_retries_total", {"model": MODEL}, equals(2)),  # the 500 and the 429, each sent once more
        "429s": ("ray_rayfan_rate_limited_total", {}, equals(1)),
        "prompt tokens": ("ray_rayfan_tokens_total", {"kind": "prompt"}, equals(ran["prompt_tokens"])),
        "completion tokens": ("ray_rayfan_tokens_total", {"kind": "completion"}, equals(ran["completion_tokens"])),
        "cost": ("ray_rayfan_cost_usd_total", {}, equals(ran["cost_usd"])),
        "latencies": ("ray_rayfan_request_latency_seconds_count", {"model": MODEL}, equals(11)),
        "in flight": ("ray_rayfan_in_flight", {}, equals(1)),  # the hanging request
        "scope requests": ("ray_rayfan_scope_requests_total", {"scope": ran["scope"]}, equals(ran["attempts"])),
        "scope 429s": ("ray_rayfan_scope_rate_limited_total", {}, equals(1)),
        "scope paused": ("ray_rayfan_scope_paused_seconds_total", {}, lambda total: total >= 0.2),  # the 429 asked for 0.3 s
        "scope tokens used": ("ray_rayfan_scope_tokens_total", {"kind": "used"}, lambda total: total > 0),
        "scope limit": ("ray_rayfan_scope_limit", {"dimension": "rpm"}, equals(RPM)),
        "scope stopped": ("ray_rayfan_scope_stopped", {}, equals(0)),
    }
    unmet, texts = scrape_until(port, expected, SCRAPE_FOR_S)
    assert not unmet, f"never seen as expected (last total seen): {unmet}"
    assert not any(KEY in text or "RECOGNIZABLE" in text for text in texts)


def test_the_status_command_without_a_cluster_on_an_empty_one_and_with_a_run(metrics_cluster: tuple[int, dict[str, Any]]) -> None:
    """Where nothing answers it fails at once (Ray itself would wait minutes); a cluster with
    no rayfan actor is one line; with a run, the screen names its scope and its adapters."""
    _, ran = metrics_cluster
    status = ran["status"]
    assert status["no_cluster"] == [StatusExit.NO_CLUSTER, ""]  # its one line goes to stderr
    assert status["empty"] == [StatusExit.NOTHING_RUNNING, "no rayfan rate-limit scope or run on this Ray cluster\n"]
    code, screen = status["running"]
    assert code == StatusExit.SHOWN
    assert f"scope {ran['scope']}: {MODEL} at " in screen and "RPM 6,000 (given 6,000," in screen
    assert "1 rate-limit scope, 2 runs with 3 adapters" in screen  # the closed pair and the one holding a request
    assert KEY not in screen
