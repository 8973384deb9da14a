"""A short run of ``bench/faults.py``: an adapter killed -9 and the driver killed -9 three times.

Same functions as the script, small N: a two-node ``Cluster`` on this machine, the fake endpoint
in its own process, ``rayfan run`` as a subprocess. Waits are on output line counts, with
deadlines (``Bench.timeout``), never fixed sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.faults import Bench, bench, scenario_adapter_kill, scenario_driver_kill

REQUESTS = 200
MAX_IN_FLIGHT = 16
LATENCY_S = 0.1


@pytest.fixture(scope="module")
def cluster_bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    with bench(LATENCY_S, adapters=4, max_in_flight=MAX_IN_FLIGHT, timeout=60, workdir=tmp_path_factory.mktemp("faults")) as b:
        yield b


def check(row: dict) -> None:
    assert row["records"] == REQUESTS and row["exactly_once"] == REQUESTS, f"one record per input: {row}"
    assert (row["duplicates"], row["missing"], row["unknown"]) == (0, 0, 0), row
    assert row["failed"] == 0, row
    assert row["never_ok"] == 0, row
    assert row["kills"] >= 1, f"the fault happened mid-run: {row}"
    # Billed twice: the requests open at the endpoint when the fault hit (at most the window), plus
    # answers already given but not yet written by the driver. The second part is small but not
    # zero: with the bound at one window per kill this failed once in three runs (54 > 3 x 16).
    assert row["billed_twice"] <= 2 * MAX_IN_FLIGHT * row["kills"], f"billed twice at most twice the window per kill: {row}"
    assert row["sent_after_driver_kill"] <= MAX_IN_FLIGHT * row["kills"], f"a dead driver's adapters stop sending: {row}"


def test_adapter_kill_9_mid_run(cluster_bench: Bench) -> None:
    row = scenario_adapter_kill(cluster_bench, REQUESTS)
    check(row)
    assert row["kills"] == 1 and row["starts"] == 1, row


def test_driver_kill_9_three_times_then_resume(cluster_bench: Bench) -> None:
    row = scenario_driver_kill(cluster_bench, REQUESTS)
    check(row)
    assert row["kills"] == 3, row
