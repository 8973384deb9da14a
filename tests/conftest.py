"""Shared fixtures: one real local Ray per session, one fake OpenAI server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import ray

from drivers.mock import MockConfig, MockServer

T = TypeVar("T")
TEST_KEY = "sk-test-key-not-secret"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one async test body on a fresh loop (no pytest-asyncio needed)."""
    return asyncio.run(coro)


@pytest.fixture(scope="session")
def mock_server() -> Iterator[MockServer]:
    with MockServer() as server:
        yield server


@pytest.fixture
def server(mock_server: MockServer) -> Iterator[MockServer]:
    """The session's server, with a clean log and default behaviour for each test."""
    mock_server.reset()
    mock_server.configure(**MockConfig().model_dump())
    yield mock_server


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        # Ray's workers inherit this environment: no test may find a developer's real key there.
        patch.delenv("OPENAI_API_KEY", raising=False)
        patch.delenv("OPENAI_BASE_URL", raising=False)
        ray.init(address="local", num_cpus=2, include_dashboard=True, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


def ray_list_actors_cli(expected_name: str) -> str:
    """What an operator sees with ``ray list actors --detail``; it must list ``expected_name``."""
    address = ray.get_runtime_context().gcs_address
    completed = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "list", "actors", "--detail", "--address", address],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert expected_name in completed.stdout, completed.stderr[-2000:]
    return completed.stdout + completed.stderr
