"""A node lost mid-run: its adapter comes back on another node, even with a CA bundle in its settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_adapters_start_one_per_node_and_a_lost_nodes_adapter_restarts_elsewhere() -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OPENAI_", "AZURE_OPENAI_"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    completed = subprocess.run(
        [sys.executable, "-m", "tests.adapters_on_lost_node"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["bundle_bytes"] > 100_000, "over Ray's inline limit, so the settings go through the object store"
    assert sorted(report["nodes"]) == sorted([report["head"], report["worker"]]), f"one adapter per node: {report}"
    assert "died" not in report, f"the lost node's adapter was restarted: {report}"
    assert report["restarted_on"] == report["head"], report
