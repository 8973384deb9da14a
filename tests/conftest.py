"""Shared fixtures: one real local Ray per session, one fake OpenAI server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import ray

from drivers.mock_server import MockConfig, MockServer

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
    ray.init(num_cpus=2, include_dashboard=True, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()
