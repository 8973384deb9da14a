"""On a cluster, settings that exist only on the driver reach the wire, with every header."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.driver_on_cluster import DRIVER_ONLY
from tests.recording_server import RecordingServer

ROOT = Path(__file__).resolve().parent.parent


def test_a_run_on_two_nodes_uses_only_the_drivers_settings(tmp_path: Path) -> None:
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {i}"}]}}
        for i in range(8)
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OPENAI_", "AZURE_OPENAI_"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    with RecordingServer() as server:
        completed = subprocess.run(
            [sys.executable, "-m", "tests.driver_on_cluster", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), server.base_url],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        received = server.requests
    assert sorted(json.loads(r.body)["messages"][0]["content"] for r in received) == [f"hi {i}" for i in range(8)]
    for request in received:
        assert request.path == "/v1/chat/completions"
        assert request.header("authorization") == f"Bearer {DRIVER_ONLY['OPENAI_API_KEY']}"
        assert request.header("openai-organization") == DRIVER_ONLY["OPENAI_ORG_ID"]
        assert request.header("openai-project") == DRIVER_ONLY["OPENAI_PROJECT_ID"]
        assert request.header("x-gateway-token") == "gw-driver-only"
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(record["error"] is None for record in records)
    assert "driver-only" not in (tmp_path / "out.jsonl").read_text()
