"""The adapter as a real Ray actor: remote calls, streaming generator, errors across the boundary, secrecy."""

from __future__ import annotations

import gc
import json
import logging

import pytest
import ray
from ray.util.state import list_actors, list_tasks

from actors import ChatTask, OpenAIAdapter, ResultTimeout, RetryPolicy, TaskNotFound, TaskResult, TaskStatus
from actors.adapter.process_gc import GC_YOUNG_THRESHOLD
from actors.adapter.settings import EndpointSettings
from drivers.mock import MockServer
from tests.conftest import ray_list_actors_cli

pytestmark = pytest.mark.usefixtures("ray_session")

SECRET = "sk-proj-RECOGNIZABLE-7d1f3e9a-SECRET"


def chat(custom_id: str, prompt: str, **fields: object) -> ChatTask:
    return ChatTask(custom_id=custom_id, messages=[{"role": "user", "content": prompt}], **fields)  # type: ignore[arg-type]


def test_remote_methods_and_domain_errors(server: MockServer) -> None:
    adapter = OpenAIAdapter.options(name="adapter-remote-test").remote(endpoint=EndpointSettings(base_url=server.base_url, api_key="sk-x"))
    result = ray.get(adapter.run.remote(chat("a", "hello there")))
    assert isinstance(result, TaskResult) and result.ok and result.cost_usd

    task_id = ray.get(adapter.submit_task.remote(chat("slow", "slow [[mock latency=5]]")))
    assert ray.get(adapter.get_status.remote(task_id)) in (TaskStatus.PENDING, TaskStatus.RUNNING)
    with pytest.raises(ResultTimeout):
        ray.get(adapter.get_result.remote(task_id, timeout=0.05))
    assert ray.get(adapter.get_result.remote(task_id)).ok
    with pytest.raises(TaskNotFound):
        ray.get(adapter.get_status.remote("missing"))

    stats = ray.get(adapter.stats.remote())
    assert stats.completed == 2 and stats.requests == 2
    ray.kill(adapter)


def test_stream_result_is_a_ray_streaming_generator(server: MockServer) -> None:
    adapter = OpenAIAdapter.remote(endpoint=EndpointSettings(base_url=server.base_url, api_key="sk-x"))
    task_id = ray.get(adapter.submit_task.remote(chat("s", "stream me a reply now", stream=True)))
    items = [ray.get(ref) for ref in adapter.stream_result.remote(task_id)]
    *deltas, final = items
    assert len(deltas) > 1 and "".join(deltas) == final.text
    assert final.usage.completion_tokens > 0 and final.cost_usd is not None
    ray.kill(adapter)


def test_the_actor_tunes_its_own_process_garbage_collector_and_no_other(server: MockServer) -> None:
    before = gc.get_threshold()
    adapter = OpenAIAdapter.remote(endpoint=EndpointSettings(base_url=server.base_url, api_key="sk-x"))
    gc_state = lambda _: (gc.get_threshold()[0], gc.get_freeze_count())  # noqa: E731  (a lambda travels by value)
    young, frozen = ray.get(adapter.__ray_call__.remote(gc_state))
    assert young == GC_YOUNG_THRESHOLD and frozen > 0
    assert gc.get_threshold() == before, "the driver's process is left alone"
    ray.kill(adapter)


def test_many_concurrent_requests_on_one_actor(server: MockServer) -> None:
    server.configure(latency_s=0.2)
    adapter = OpenAIAdapter.remote(endpoint=EndpointSettings(base_url=server.base_url, api_key="sk-x"))
    results = ray.get([adapter.run.remote(chat(f"c{i}", f"prompt {i}")) for i in range(200)])
    assert sorted(r.custom_id for r in results) == sorted(f"c{i}" for i in range(200))
    assert all(r.ok for r in results)
    ray.kill(adapter)


def test_api_key_appears_nowhere(server: MockServer, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    """A recognizable key is used for good and bad requests; it must reach the server and nothing else."""
    fast = RetryPolicy(max_attempts=2, min_wait_s=0.01, max_wait_s=0.02)
    adapter = OpenAIAdapter.options(name="adapter-secret-test").remote(
        endpoint=EndpointSettings(base_url=server.base_url, api_key=SECRET), retry=fast
    )
    with caplog.at_level(logging.DEBUG):
        results = ray.get(
            [
                adapter.run.remote(chat("ok", "fine")),
                adapter.run.remote(chat("auth", "who are you [[mock status=401]]")),
                adapter.run.remote(chat("busy", "busy [[mock status=429 retry_after=0]]")),
                adapter.run.remote(chat("drop", "gone [[mock drop]]")),
            ]
        )
        with pytest.raises(TaskNotFound) as missing:
            ray.get(adapter.get_result.remote("missing"))
        status = ray.get(adapter.status.remote())
        stats = ray.get(adapter.stats.remote())
        adapter_repr = repr(adapter)
    address = ray.get_runtime_context().gcs_address  # this session's cluster, whatever else runs here
    actors = list_actors(address=address, detail=True, limit=10_000)
    tasks = list_tasks(address=address, detail=True, limit=10_000)
    ray.kill(adapter)
    assert any(actor.name == "adapter-secret-test" for actor in actors), "the listing must include the adapter"
    assert any(entry.authorization == f"Bearer {SECRET}" for entry in server.requests()), "the key must reach the server"
    captured = capfd.readouterr()
    haystack = "\n".join(
        [
            caplog.text,
            captured.out,
            captured.err,
            json.dumps([r.model_dump(mode="json") for r in results]),
            str(missing.value),
            repr(missing.value),
            status.model_dump_json(),
            stats.model_dump_json(),
            adapter_repr,
            str(actors),
            str(tasks),
            ray_list_actors_cli("adapter-secret-test"),
        ]
    )
    assert "Bearer" not in haystack and "RECOGNIZABLE" not in haystack
    assert any(r.error and r.error.code == "authentication_error" for r in results)
