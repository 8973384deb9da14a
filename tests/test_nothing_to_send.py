"""A run starts Ray and its adapters only for its first request to send.

A re-run of a finished output, or an input of bad lines only, writes what it has to
without them. Each run here is a ``rayfan run`` process given an address where nothing
answers: joining it would fail, so a run that exits well never tried.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.cli import main
from drivers.mock import MockServer
from drivers.summary import ExitCode
from tests.conftest import TEST_KEY

PROMPTS = 6


def _closed_address() -> str:
    """An address of this machine where nothing listens (the port was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def _rayfan(source: Path, out: Path, server: MockServer, address: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "drivers.cli", "run", str(source), "-o", str(out), "--base-url", server.base_url, "--address", address]
    env = {**os.environ, "OPENAI_API_KEY": TEST_KEY, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.usefixtures("ray_session")
def test_a_rerun_of_a_finished_output_starts_no_ray(tmp_path: Path, server: MockServer, monkeypatch: pytest.MonkeyPatch) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"custom_id": f"k{i}", "prompt": f"finished prompt {i}"}) + "\n" for i in range(PROMPTS)))
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    assert main(["run", str(source), "-o", str(out), "--base-url", server.base_url]) == ExitCode.OK  # the session's Ray
    finished, sent = out.read_bytes(), len(server.requests())
    assert sent == PROMPTS

    rerun = _rayfan(source, out, server, _closed_address())

    assert rerun.returncode == ExitCode.OK, rerun.stderr
    assert f"requests: 0 succeeded, 0 failed, 0 invalid lines, 0 not run ({PROMPTS} already done before this run)" in rerun.stdout
    assert out.read_bytes() == finished and len(server.requests()) == sent


def test_an_input_of_bad_lines_only_is_recorded_without_ray(tmp_path: Path, server: MockServer) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('{oops\n{"custom_id": "x", "url": "/v1/nope", "body": {}}\n')

    run = _rayfan(source, out, server, _closed_address())

    assert run.returncode == ExitCode.SOME_FAILED, run.stderr
    assert "requests: 0 succeeded, 0 failed, 2 invalid lines, 0 not run" in run.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["rayfan"]["line"], r["error"]["code"]) for r in records] == [(1, "invalid_json"), (2, "unknown_url")]
    assert server.requests() == []


def test_the_first_request_to_send_does_join_the_address(tmp_path: Path, server: MockServer) -> None:
    """The other side of the two above: with one good line, the run joins the address,
    and where nothing answers says so at once, having sent nothing."""
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('{oops\n{"prompt": "one good line"}\n')
    address = _closed_address()

    run = _rayfan(source, out, server, address)

    assert run.returncode == ExitCode.USAGE
    assert f"nothing answers at {address}: is the Ray cluster up" in run.stderr
    assert server.requests() == []
