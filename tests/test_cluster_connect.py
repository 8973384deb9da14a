"""Which Ray a run joins when given no address: one ``ray start`` left running here, if it
still answers, else a new one (never a dead cluster's recorded address, which hangs)."""

from __future__ import annotations

import socket

import pytest

from drivers import cluster


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_ray_recorded_as_running_that_answers_is_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        monkeypatch.setattr(cluster, "read_ray_address", lambda: address)
        assert cluster._running_here() == "auto", "Ray finds it again, with its token"


@pytest.mark.parametrize("recorded", [None, "", "not-an-address", "127.0.0.1:notaport", "closed"])
def test_a_dead_or_missing_record_starts_a_local_ray(monkeypatch: pytest.MonkeyPatch, recorded: str | None) -> None:
    address = f"127.0.0.1:{_free_port()}" if recorded == "closed" else recorded
    monkeypatch.setattr(cluster, "read_ray_address", lambda: address)
    assert cluster._running_here() == "local"
