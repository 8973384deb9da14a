"""A key the server keeps rejecting stops the scope: the rest is recorded as not run, and a
re-run with a good key sends exactly that rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.adapter.executor import STOP_AFTER
from drivers.cli import main
from drivers.mock import MockServer
from drivers.summary import ExitCode

LINES = 300
MAX_IN_FLIGHT = 4


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.usefixtures("ray_session")
def test_a_revoked_key_stops_sending_and_a_rerun_with_a_good_key_sends_the_rest(
    tmp_path: Path, server: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.configure(revoked_keys=frozenset({"sk-revoked"}))
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"custom_id": f"r{i}", "prompt": f"question {i}"}) + "\n" for i in range(LINES)))
    out = tmp_path / "out.jsonl"
    command = ["run", str(source), "-o", str(out), "--base-url", server.base_url, "--adapters", "2", "--max-in-flight", str(MAX_IN_FLIGHT)]

    monkeypatch.setenv("OPENAI_API_KEY", "sk-revoked")
    assert main([*command, "--rpm", "100000"]) == ExitCode.SOME_FAILED
    sent = len(server.requests())
    records = _records(out)
    assert sorted(r["custom_id"] for r in records) == sorted(f"r{i}" for i in range(LINES)), "one record per input"
    codes = [r["error"]["code"] for r in records]
    assert STOP_AFTER <= sent <= STOP_AFTER + 2 * MAX_IN_FLIGHT, "it stopped after a handful"
    assert codes.count("authentication_error") == sent and codes.count("key_rejected") == LINES - sent
    not_run = next(r for r in records if r["error"]["code"] == "key_rejected")
    assert "rejected" in not_run["error"]["message"] and "sk-revoked" not in out.read_text()

    server.reset()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-good")
    assert main(command) == ExitCode.SOME_FAILED, "the rejected ones stay failed without --retry-failed"
    assert len(server.requests()) == LINES - sent, "exactly the requests never sent"
    final = _records(out)
    assert sorted(r["custom_id"] for r in final) == sorted(f"r{i}" for i in range(LINES)), "still one record per input"
    assert sum(r["error"] is None for r in final) == LINES - sent
