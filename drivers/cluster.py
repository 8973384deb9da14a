"""Joining Ray and placing adapter actors: the one place that knows about Ray options."""

from __future__ import annotations

import logging
import os

import ray
from pydantic import SecretStr
from ray.actor import ActorHandle

from actors.adapter import OpenAIAdapter
from actors.retry import RetryPolicy

log = logging.getLogger(__name__)


def connect(address: str | None) -> None:
    """Start a local Ray, or join the cluster at ``address``; a no-op when already connected."""
    if ray.is_initialized():
        return
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, include_dashboard=False)


def start_adapters(
    count: int,
    *,
    base_url: str | None,
    api_key: str | None,
    model: str,
    retry: RetryPolicy | None = None,
) -> list[ActorHandle]:
    """K adapter actors SPREAD over the nodes. The key travels as a SecretStr, never in
    options or names that Ray lists; without one, each adapter reads its node's environment."""
    key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
    secret = SecretStr(key) if key else None
    return [
        OpenAIAdapter.options(scheduling_strategy="SPREAD").remote(
            base_url=base_url, api_key=secret, model=model, name=f"adapter-{index}", retry=retry
        )
        for index in range(count)
    ]
