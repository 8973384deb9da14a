"""``rayfan run --address ray://…``: a driver joined through Ray Client, which has no streaming
generators, still gets one record per request (each batch's results come back together);
``rayfan status`` through the same client shows the run's scope."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

pytestmark = pytest.mark.usefixtures("ray_session")

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_listening(port: int, server: subprocess.Popen[str], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert server.poll() is None, "the Ray Client server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            assert time.monotonic() < deadline, "the Ray Client server never listened"
            time.sleep(0.1)


def test_a_run_through_ray_client_writes_one_record_per_request(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "AZURE_OPENAI_"))}
    port = _free_port()
    command = [sys.executable, "-m", "ray.util.client.server", "--mode", "legacy", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen([*command, "--address", ray.get_runtime_context().gcs_address], env=env, stderr=subprocess.DEVNULL, text=True)
    try:
        _wait_until_listening(port, server)
        lines = [{"custom_id": f"c{i}", "prompt": f"through the client {i}"} for i in range(40)]
        (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        run = [sys.executable, "-m", "drivers.cli", "run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"), "--mock"]
        run += ["--address", f"ray://127.0.0.1:{port}", "--adapters", "2", "--max-in-flight", "8"]
        completed = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
        status = [sys.executable, "-m", "drivers.cli", "status", "--address", f"ray://127.0.0.1:{port}"]
        shown = subprocess.run(status, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["custom_id"] for r in records) == sorted(line["custom_id"] for line in lines)
    assert all(r["error"] is None for r in records)
    assert shown.returncode == 0, shown.stdout[-2000:] + shown.stderr[-3000:]
    assert "rayfan status at" in shown.stdout and "\nscope rayfan-limits-" in shown.stdout, "the run's scope outlives it, seen through the client"
