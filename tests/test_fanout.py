"""The bounded, batched window of requests over real adapter actors."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import ray
from ray.exceptions import RayActorError

from actors import ChatTask, InvalidTask, OpenAIAdapter, TaskResult, TaskStatus
from actors.adapter.settings import EndpointSettings
from drivers.cluster import start_adapters
from drivers.fanout import Dispatcher, batch_size_for, fan_out
from drivers.mock import MockServer
from tests.broken_link import LinkLostOnce

pytestmark = pytest.mark.usefixtures("ray_session")


def chat(custom_id: str, prompt: str) -> ChatTask:
    return ChatTask(custom_id=custom_id, messages=[{"role": "user", "content": prompt}], max_tokens=8)


def adapters(server: MockServer, count: int) -> list:
    return [OpenAIAdapter.remote(endpoint=EndpointSettings(base_url=server.base_url, api_key="sk-x")) for _ in range(count)]


def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _pid_once_up(handle: ray.actor.ActorHandle) -> int | None:
    """The actor's process id, or None while it is dead or not yet up (a loaded machine can
    take a while to start a replacement, and the run may finish on the other adapter before)."""
    try:
        return int(ray.get(handle.__ray_call__.remote(lambda _: os.getpid())))
    except RayActorError:
        return None


def test_every_task_comes_back_once_and_the_window_is_never_exceeded(server: MockServer) -> None:
    handles = adapters(server, 2)
    tasks = [chat(f"t{i}", f"prompt {i}") for i in range(103)]
    dispatcher: Dispatcher[str] = Dispatcher(handles, max_in_flight=10, batch_size=3)
    seen: list[str] = []
    pending = iter(tasks)
    for task in pending:
        dispatcher.send(task.custom_id, task)
        assert dispatcher.in_flight <= 10
        while not dispatcher.has_room:
            seen += [item for item, result in dispatcher.collect() if result.ok]
    while dispatcher.in_flight:
        seen += [item for item, result in dispatcher.collect() if result.ok]
    assert sorted(seen) == sorted(task.custom_id for task in tasks)
    assert len(server.requests()) == 103
    for handle in handles:
        ray.kill(handle)


def test_capped_adapters_get_tasks_queued_ahead_yet_the_endpoint_never_sees_more_than_the_window(server: MockServer) -> None:
    server.configure(latency_s=0.3)
    handles = start_adapters(2, endpoint=EndpointSettings(base_url=server.base_url, api_key="sk-x"), model="gpt-4o-mini", max_in_flight=7)
    assert [info.max_in_flight for info in ray.get([h.status.remote() for h in handles])] == [4, 3]
    dispatcher: Dispatcher[str] = Dispatcher(handles, max_in_flight=7, batch_size=1)
    assert dispatcher.max_held == 7 + 2 * 1 * 2, "two batches per adapter wait in its queue"
    held, seen = 0, []
    for i in range(40):
        dispatcher.send(f"t{i}", chat(f"t{i}", f"prompt {i}"))
        held = max(held, dispatcher.in_flight)
        while not dispatcher.has_room:
            seen += [item for item, result in dispatcher.collect() if result.ok]
    while dispatcher.in_flight:
        seen += [item for item, result in dispatcher.collect() if result.ok]
    assert sorted(seen) == sorted(f"t{i}" for i in range(40))
    assert held == 11 and server.peak_in_flight == 7
    for handle in handles:
        ray.kill(handle)


def test_cancel_waiting_sends_nothing_more(server: MockServer) -> None:
    server.configure(latency_s=1.0)
    handles = start_adapters(1, endpoint=EndpointSettings(base_url=server.base_url, api_key="sk-x"), model="gpt-4o-mini", max_in_flight=2)
    dispatcher: Dispatcher[str] = Dispatcher(handles, max_in_flight=2, batch_size=2)
    for i in range(5):  # two batches reach the adapter (two run, two wait); the fifth stays buffered here
        dispatcher.send(f"t{i}", chat(f"t{i}", f"prompt {i}"))
    # both batches arrived (Ray may start an async actor's calls out of order), two requests sent
    wait_until(lambda: ray.get(handles[0].status.remote()).in_flight == 4 and len(server.requests()) == 2)
    dispatcher.cancel_waiting()
    results = []
    while dispatcher.in_flight:
        results += dispatcher.collect(timeout=30)
    completed = sorted(item for item, result in results if result.status is TaskStatus.COMPLETED)
    cancelled = sorted(item for item, result in results if result.status is TaskStatus.CANCELLED)
    sent = sorted(f"t{entry.body['messages'][0]['content'].split()[1]}" for entry in server.requests() if entry.body)
    assert len(completed) == len(cancelled) == 2 and sorted(completed + cancelled) == ["t0", "t1", "t2", "t3"]
    assert sent == completed, "the cancelled ones never reached the endpoint"
    ray.kill(handles[0])


def test_at_the_end_tasks_queued_behind_slow_requests_move_to_a_free_adapter(server: MockServer) -> None:
    handles = start_adapters(2, endpoint=EndpointSettings(base_url=server.base_url, api_key="sk-x"), model="gpt-4o-mini", max_in_flight=4)
    slow = "[[mock latency=4]]"
    # One task per batch, least busy first: adapter 0 gets t0 t2 t4 t6, adapter 1 t1 t3 t5 t7.
    # Adapter 0 runs two of its four (its cap is 2) and queues the others; a fast one queued
    # behind the slow ones waits 4 s unless it is moved (Ray may start the calls in any order,
    # so a fast one may also run, and finish, first).
    prompts = {f"t{i}": f"prompt {i} {slow if i in (0, 2) else ''}" for i in range(8)}

    def tasks() -> Iterator[ChatTask]:
        yield from (chat(custom_id, prompt) for custom_id, prompt in prompts.items())
        wait_until(lambda: ray.get(handles[0].status.remote()).received == 4)  # all four reached adapter 0

    started = time.monotonic()
    finished = {task.custom_id: time.monotonic() - started for task, result in fan_out(tasks(), handles, max_in_flight=4) if result.ok}
    assert sorted(finished) == sorted(prompts)
    assert max(finished["t4"], finished["t6"]) < min(finished["t0"], finished["t2"]), "moved to adapter 1, not left behind the slow ones"
    sent = [entry.body["messages"][0]["content"].split()[1] for entry in server.requests() if entry.body]
    assert sorted(sent) == sorted(str(i) for i in range(8)), "each sent exactly once: a task handed back had never been sent"
    for handle in handles:
        ray.kill(handle)


def test_tasks_handed_back_after_a_stop_are_not_sent_again(server: MockServer) -> None:
    server.configure(latency_s=5.0)  # the first two still run when the rest are handed back, on a loaded box too
    handles = start_adapters(2, endpoint=EndpointSettings(base_url=server.base_url, api_key="sk-x"), model="gpt-4o-mini", max_in_flight=2)
    dispatcher: Dispatcher[str] = Dispatcher(handles, max_in_flight=2, batch_size=1)
    for i in range(6):  # each adapter runs one and queues two
        dispatcher.send(f"t{i}", chat(f"t{i}", f"prompt {i}"))
    dispatcher.input_done()
    wait_until(lambda: [info.in_flight for info in ray.get([h.status.remote() for h in handles])] == [3, 3])
    dispatcher.cancel_waiting()
    results = []
    while dispatcher.in_flight:
        results += dispatcher.collect(timeout=30)
    assert sorted(result.status.value for _, result in results) == ["CANCELLED"] * 4 + ["COMPLETED"] * 2
    assert len(server.requests()) == 2
    for handle in handles:
        ray.kill(handle)


def test_uncapped_adapters_get_no_more_than_the_window(server: MockServer) -> None:
    handles = adapters(server, 2)  # each may open 4,096 requests: the window is the only limit
    assert Dispatcher(handles, max_in_flight=10).max_held == 10
    for handle in handles:
        ray.kill(handle)


def test_a_partial_batch_is_sent_when_the_dispatcher_waits(server: MockServer) -> None:
    handles = adapters(server, 1)
    dispatcher: Dispatcher[str] = Dispatcher(handles, max_in_flight=100, batch_size=64)
    dispatcher.send("only", chat("only", "alone"))
    results = dispatcher.collect(timeout=30)
    assert [(item, result.ok) for item, result in results] == [("only", True)]
    ray.kill(handles[0])


def test_a_dead_adapter_turns_its_requests_into_error_results(server: MockServer) -> None:
    doomed, healthy = adapters(server, 2)
    dispatcher: Dispatcher[str] = Dispatcher([doomed], max_in_flight=10, batch_size=2)
    dispatcher.send("h1", chat("h1", "wait [[mock hang]]"))
    dispatcher.send("h2", chat("h2", "wait too [[mock hang]]"))
    deadline = time.monotonic() + 20
    while len(server.requests()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    ray.kill(doomed)
    results = []
    while dispatcher.in_flight:
        results += dispatcher.collect(timeout=30)
    assert sorted(item for item, _ in results) == ["h1", "h2"]
    assert all(r.status is TaskStatus.FAILED and r.error and r.error.code == "adapter_died" for _, r in results)
    ray.kill(healthy)


def test_fan_out_validates_before_sending(server: MockServer) -> None:
    handles = adapters(server, 1)
    with pytest.raises(InvalidTask, match="messages"):
        list(fan_out([{"custom_id": "bad", "messages": []}], handles))
    assert server.requests() == []
    ray.kill(handles[0])


def test_batch_size_leaves_several_batches_per_adapter() -> None:
    assert batch_size_for(512, 2) == 64
    assert batch_size_for(40, 2) == 5
    assert batch_size_for(3, 8) == 1


def test_an_adapter_killed_mid_run_is_replaced_and_its_work_moves(server: MockServer) -> None:
    """kill -9 of an adapter's process: its lost batches go out again, a new adapter takes its place, and
    every task ends with one successful result; what was sent twice is counted."""
    server.configure(latency_s=0.2)
    handles = start_adapters(2, endpoint=EndpointSettings(base_url=server.base_url, api_key="sk-x"), model="gpt-4o-mini", max_in_flight=16)
    victim_pid = ray.get(handles[0].__ray_call__.remote(lambda _: os.getpid()))
    dispatcher: Dispatcher[str] = Dispatcher(handles, max_in_flight=16)
    results: list[tuple[str, TaskResult]] = []
    for i in range(120):
        dispatcher.send(f"t{i}", chat(f"t{i}", f"survive {i}"))
        while not dispatcher.has_room:
            results += dispatcher.collect(timeout=30)
        if i == 40:
            wait_until(lambda: len(server.requests()) >= 30)
            os.kill(victim_pid, signal.SIGKILL)
    dispatcher.input_done()
    while dispatcher.in_flight:
        results += dispatcher.collect(timeout=30)
    try:
        assert sorted(item for item, _ in results) == sorted(f"t{i}" for i in range(120)), "one result per task"
        assert all(result.ok for _, result in results), [r.error for _, r in results if not r.ok][:3]
        assert dispatcher.resent > 0
        sent = Counter(e.body["messages"][0]["content"] for e in server.requests() if e.body)
        assert sum(sent.values()) - 120 <= dispatcher.resent, "sent twice only what was counted"
        # replaced: collect() drives the probes, even with nothing left in flight
        wait_until(lambda: dispatcher.collect(timeout=0.1) == [] and _pid_once_up(handles[0]) not in (None, victim_pid), timeout_s=60)
        assert handles.replaced == [1, 0]
    finally:
        for handle in handles:
            ray.kill(handle)


def test_results_come_back_per_request_not_per_batch(server: MockServer) -> None:
    """A request that hangs holds back none of the finished ones in its batch."""
    handles = adapters(server, 1)
    dispatcher: Dispatcher[str] = Dispatcher(handles, max_in_flight=10, batch_size=4)
    dispatcher.send("slow", chat("slow", "wait [[mock hang]]"))
    for i in range(3):
        dispatcher.send(f"quick{i}", chat(f"quick{i}", f"answer {i}"))
    results: list[tuple[str, TaskResult]] = []
    while len(results) < 3:
        results += dispatcher.collect(timeout=30)
    assert sorted(item for item, _ in results) == ["quick0", "quick1", "quick2"] and all(r.ok for _, r in results)
    assert dispatcher.in_flight == 1, "the slow one is still out"
    dispatcher.cancel_waiting()
    ray.kill(handles[0])


def test_a_batch_whose_stream_broke_on_a_live_adapter_is_resent_and_cancelled_there(server: MockServer) -> None:
    """The lost batch goes out again, and the adapter, found alive, stops running its copy."""
    handle = LinkLostOnce.remote(endpoint=EndpointSettings(base_url=server.base_url, api_key="sk-x"))
    dispatcher: Dispatcher[str] = Dispatcher([handle], max_in_flight=8, batch_size=3)
    for i in range(3):
        dispatcher.send(f"h{i}", chat(f"h{i}", f"first copy hangs {i} [[mock hang times=1]]"))
    results: list[tuple[str, TaskResult]] = []
    while dispatcher.in_flight:
        results += dispatcher.collect(timeout=30)
    try:
        assert sorted(item for item, result in results if result.ok) == ["h0", "h1", "h2"], [r.error for _, r in results]
        assert dispatcher.resent == 3
        wait_until(lambda: [e.outcome for e in server.requests()].count("disconnected") == 3)
        assert sorted(e.outcome for e in server.requests()) == ["disconnected"] * 3 + ["ok"] * 3
    finally:
        ray.kill(handle)


def test_adapters_given_cpus_hold_them_while_they_live(server: MockServer) -> None:
    """--adapter-cpus: room an autoscaler adds nodes for; by default an adapter holds none."""
    endpoint = EndpointSettings(base_url=server.base_url, api_key="sk-x")
    free_before = ray.available_resources().get("CPU", 0.0)
    plain = start_adapters(2, endpoint=endpoint, model="gpt-4o-mini", max_in_flight=2)
    holding = start_adapters(2, endpoint=endpoint, model="gpt-4o-mini", max_in_flight=2, cpus=0.5)
    try:
        wait_until(lambda: ray.available_resources().get("CPU", 0.0) == free_before - 1.0)
        assert all(result.ok for _, result in fan_out([chat(f"c{i}", f"cpu {i}") for i in range(4)], holding, max_in_flight=2))
    finally:
        for handle in [*plain, *holding]:
            ray.kill(handle)
    wait_until(lambda: ray.available_resources().get("CPU", 0.0) == free_before)
