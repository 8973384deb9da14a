"""A node lost before a run's work: its adapter is replaced on another node, even with a CA bundle in its settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_adapters_start_one_per_node_and_a_lost_nodes_adapter_is_replaced_elsewhere() -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OPENAI_", "AZURE_OPENAI_"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    completed = subprocess.run(
        [sys.executable, "-m", "tests.adapters_on_lost_node"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["bundle_bytes"] > 100_000, "over Ray's inline limit, so Ray stores the settings itself"
    assert sorted(report["nodes"]) == sorted([report["head"], report["worker"]]), f"one adapter per node: {report}"
    assert report["ok"] == 40 and report["errors"] == [], f"every task done after the loss: {report}"
    assert sorted(report["replaced"]) == [0, 1], f"the lost adapter was replaced once, the other never: {report}"
    assert report["replacement_on"] == report["head"], report
    assert "constructor arguments in the object store" not in completed.stderr, "no restart by Ray, so no warning of it"
