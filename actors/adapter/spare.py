"""Spare adapters: adapter processes started before their run, so that a run joining a running
Ray does not wait for new worker processes to start and import the SDK (2 s of a 3 s run
on the dev box, ``bench/startup.py``).

A spare is a detached actor with no endpoint, no key and no work. A run takes it
(``SpareAdapter.take``, once: a second taker gets None) and configures it as one of its
adapters. Ray kills the adapters a driver owns when the driver dies; it does not kill a
detached actor, which would go on sending what it had queued, and a re-run would send it
again (paid twice). So a taken spare asks the GCS every ``JOB_POLL_S`` whether its run's
job has ended and ends its process when it has: gone 0.054 s after a ``kill -9`` of the
driver, where an owned adapter stopped in 0.034 s (``bench/owner_death.py``). A spare left
untaken exits after its idle time. Its name carries a hash of its code and versions
(``code_identity()``) and of its job's runtime environment (``drivers.spares.spare_identity``),
so a run never takes a spare of other code, or one set up for another environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib
import logging
import os
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import ray

from actors.accounting import tokens
from actors.adapter.actor import MAX_CONCURRENCY, Adapter, AdapterInfo
from actors.adapter.process_gc import tune_for_many_open_requests
from actors.adapter.stats import AdapterStats
from actors.errors import SpareNotTaken
from actors.ratelimit.coordinator import exit_from_timer

log = logging.getLogger(__name__)

SPARE_NAME_PREFIX = "rayfan-spare-"
JOB_POLL_S = 0.02
"""How often a taken spare asks whether its run's driver is still there: what it may send
after a ``kill -9`` of the driver, a re-run pays for again."""
_ADAPTER_IMPORTS = tuple(f"actors.adapter.{name}" for name in ("batch_files", "endpoints", "executor", "retry", "transport"))
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def code_identity() -> str:
    """A hash of the adapter's code (every file of the ``actors`` package) and of the Python,
    Ray and SDK it runs on: spares of another checkout or version have another one."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_ROOT.rglob("*")):
        if path.suffix in {".py", ".json"} and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(_PACKAGE_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(f"{sys.version}|{ray.__version__}|{metadata.version('openai')}".encode())
    return digest.hexdigest()[:12]


class JobWatch:
    """Ends this process once ``job`` has ended: the driver is gone, and nothing this spare
    still has open may go on. Asks the GCS's job table, a private API of Ray: ``take`` asks
    once before it agrees, so a Ray where it fails gets no spare."""

    def __init__(self, job: str) -> None:
        self._job = job
        worker: Any = ray._private.worker.global_worker  # the job table has no public API inside a worker
        self._gcs = worker.gcs_client

    def ended(self) -> bool:
        jobs = self._gcs.get_all_job_info(job_or_submission_id=self._job, skip_submission_job_info_field=True, skip_is_running_tasks_field=True)
        return not jobs or any(info.is_dead for info in jobs.values())

    def start(self) -> None:
        threading.Thread(target=self._watch, name="rayfan-job-watch", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(JOB_POLL_S)
            try:
                ended = self.ended()
            except Exception:  # the GCS restarting: ask again
                continue
            if ended:
                log.info("the driver of job %s is gone: this adapter ends", self._job)
                os._exit(0)  # as Ray ends an owned actor: whatever is open is dropped, not finished


class _Spare(Adapter):
    """An adapter whose endpoint comes later, from the run that takes it."""

    def __init__(self, *, idle_s: float) -> None:
        """``idle_s``: how long it waits untaken before it exits. The adapter's own
        ``__init__`` runs in ``take``."""
        tune_for_many_open_requests()
        for module in _ADAPTER_IMPORTS:  # what an adapter imports (the SDK, aiohttp, tenacity): the wait a spare saves
            importlib.import_module(module)

        tokens.load_in_background()
        self._taken_by: str | None = None
        self._expiry: asyncio.TimerHandle | None = None
        with contextlib.suppress(RuntimeError):  # Ray runs an async actor's __init__ on its loop
            self._expiry = asyncio.get_running_loop().call_later(idle_s, exit_from_timer)

    def __repr__(self) -> str:  # Ray names the actor's log lines with it, before and after the take
        return super().__repr__() if hasattr(self, "name") else f"SpareAdapter(taken by job {self._taken_by})"

    async def take(self, *, job: str, **adapter: Any) -> AdapterInfo | None:
        """Become an adapter of the run whose driver is ``job`` (the keyword arguments of
        ``Adapter``); None if another run took this spare first. Raises, and exits, if it
        cannot be one: the job has ended, this Ray lacks the job table's API, bad arguments."""
        if self._taken_by is not None:
            return None
        self._taken_by = job  # no await before this: two takers cannot both get here
        if self._expiry is not None:
            self._expiry.cancel()
        watch = JobWatch(job)
        try:
            if watch.ended():
                raise SpareNotTaken(f"job {job} has ended already: nobody to take this spare for")
            Adapter.__init__(self, **adapter)
        except Exception:
            log.exception("a spare adapter could not be taken; it exits")
            asyncio.get_running_loop().call_soon(exit_from_timer)
            raise
        watch.start()
        return await self.status()

    async def waiting(self) -> str | None:
        """This spare's node (hex id) while no run has taken it; None once one has."""
        return ray.get_runtime_context().get_node_id() if self._taken_by is None else None

    async def status(self) -> AdapterInfo:
        if self._taken_by is None:
            raise SpareNotTaken("a spare adapter, not taken by any run")
        return await super().status()

    async def stats(self) -> AdapterStats:
        if self._taken_by is None:
            raise SpareNotTaken("a spare adapter, not taken by any run")
        return await super().stats()


SpareAdapter = ray.remote(max_concurrency=MAX_CONCURRENCY, max_restarts=0, max_task_retries=0)(_Spare)  # type: ignore[call-overload]  # Ray's stubs omit max_concurrency
