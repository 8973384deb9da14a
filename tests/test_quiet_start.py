"""A first run, with a Ray of its own, prints the summary and none of Ray's notices meant for
someone who configured something (token authentication, actor restart arguments)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RAYFAN = Path(sys.executable).parent / "rayfan"
NOTICES = ("Token authentication is enabled", "constructor arguments in the object store", "Traceback")


@pytest.mark.skipif(not RAYFAN.exists(), reason="needs the installed rayfan command (pip install -e .)")
def test_a_run_that_starts_its_own_ray_says_nothing_but_its_summary(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": f"quiet {i}"}) + "\n" for i in range(5)))
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "AZURE_OPENAI_", "RAY_ADDRESS", "RAY_AUTH"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    command = [str(RAYFAN), "run", "in.jsonl", "-o", "out.jsonl", "--mock", "--address", "local", "--no-progress"]
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "requests: 5 succeeded" in completed.stdout
    assert [notice for notice in NOTICES if notice in completed.stderr] == [], completed.stderr[-3000:]
