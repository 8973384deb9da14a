"""How long an actor keeps working after its driver is killed: the cost of warm adapters.

    python bench/owner_death.py [--repeat N]

Start-up (``bench/startup.py``) is mostly each adapter's new worker process importing the
SDK. Only adapter processes that outlive runs (detached actors, kept warm) would save that;
but a detached actor does not die with its driver, and work it goes on sending after a
``kill -9`` of the driver is sent again by the re-run: paid twice. This measures the window
in each design, against one Ray held by this script:

* ``owned``: a driver process creates an actor, as ``rayfan run`` creates its adapters, and
  is killed with SIGKILL. Ray kills the actor: how long does it go on working?
* ``detached``: a detached actor (a warm adapter) given the driver's pending ObjectRef, the
  way Ray tells a borrower that an owner died (``OwnerDiedError``): how long until it knows?
* ``polled``: the same actor asking the GCS's job table every 20 ms whether the driver's job
  has ended (a GCS call per adapter every 20 ms, through Ray's private GCS client).
* ``spare``: what rayfan does since (``actors/adapter/spare.py``): a spare adapter taken by
  the driver, whose watch thread asks the same every 20 ms and ends its process; the stamp
  is when its process is seen gone (looked for every millisecond).

The owned actor stamps the wall clock into a file every 5 ms, a detached one once, on notice;
the window is the last stamp minus the moment of the kill. Medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DRIVER = """
import asyncio, logging, pathlib, sys, threading, time, ray
ray.init(address=sys.argv[1], namespace="rayfan-owner-death", include_dashboard=False, logging_level=logging.WARNING)

@ray.remote
class Owned:
    def __init__(self, path):
        def stamp():
            with open(path, "a") as out:
                while True:
                    out.write(f"{time.time()}\\n"); out.flush(); time.sleep(0.005)
        threading.Thread(target=stamp, daemon=True).start()
    def ready(self):
        return True

@ray.remote
class Holder:
    async def hold(self):  # never answers: the ref it returns stays pending, owned by the caller
        await asyncio.Event().wait()

@ray.remote
class Warm:
    async def watch(self, refs, path):
        try:
            await refs[0]
        except ray.exceptions.OwnerDiedError:  # once Ray notices the owner is gone
            pathlib.Path(path).write_text(f"{time.time()}\\n")
    async def poll(self, job, path):  # ask the GCS every POLL_JOB_S whether the driver's job has ended
        gcs = ray._private.worker.global_worker.gcs_client
        while not any(info.is_dead for info in gcs.get_all_job_info(job_or_submission_id=job, skip_submission_job_info_field=True, skip_is_running_tasks_field=True).values()):
            await asyncio.sleep(POLL_JOB_S)
        pathlib.Path(path).write_text(f"{time.time()}\\n")
    def ready(self):
        return True

scene, path, POLL_JOB_S = sys.argv[2], sys.argv[3], float(sys.argv[4])
if scene == "owned":
    actor = Owned.remote(path)
    ray.get(actor.ready.remote())
elif scene == "spare":  # rayfan's spare adapter, taken by this driver: the end of its process is the stamp
    sys.path.insert(0, sys.argv[5])
    from actors.adapter.settings import EndpointSettings
    from actors.adapter.spare import SpareAdapter
    spare = SpareAdapter.options(name=f"owner-death-spare-{time.time_ns()}", lifetime="detached").remote(idle_s=600)
    job = ray.get_runtime_context().get_job_id()
    assert ray.get(spare.take.remote(job=job, endpoint=EndpointSettings(api_key="sk-owner-death"), model="gpt-4o-mini")) is not None
    pathlib.Path(path + ".pid").write_text(str(ray.get(spare.__ray_call__.remote(lambda self: __import__("os").getpid()))))
else:
    holder = Holder.options(name="owner-death-holder", lifetime="detached", get_if_exists=True).remote()
    warm = Warm.options(name="owner-death-warm", lifetime="detached", get_if_exists=True).remote()
    ray.get(warm.ready.remote())
    if scene == "detached":
        warm.watch.remote([holder.hold.remote()], path)  # in a list: passed as a ref, not awaited here
    else:
        warm.poll.remote(ray.get_runtime_context().get_job_id(), path)
    ray.get(warm.ready.remote())  # the call above has reached the actor before this one
print("ready", flush=True)
time.sleep(3600)
"""
HOLD_RAY = """
import logging, sys, ray
ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""
POLL_JOB_S = 0.02
SCENES = {
    "owned": "an actor the driver owns (rayfan's adapters)",
    "detached": "a detached actor told by OwnerDiedError",
    "polled": f"a detached actor asking the GCS every {POLL_JOB_S * 1000:.0f} ms",
    "spare": "rayfan's spare adapter, taken (actors/adapter/spare.py)",
}
SETTLE_S = 0.3
"""After the driver says ready, before the kill: the owned actor has stamped a few times."""
NOTICE_WAIT_S = 15.0
POLL_S = 0.5
"""Stamps unchanged over this long have stopped (they come every 5 ms while the actor works)."""


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_ADDRESS")}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


def window_after_kill(address: str, scene: str, stamps: Path) -> float:
    """Seconds from the driver's SIGKILL to the actor's last stamp."""
    stamps.unlink(missing_ok=True)
    command = [sys.executable, "-c", DRIVER, address, scene, str(stamps), str(POLL_JOB_S), str(ROOT)]
    driver = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, text=True)
    assert driver.stdout is not None
    if driver.stdout.readline().strip() != "ready":
        driver.kill()
        raise SystemExit(f"{scene}: the driver did not start")
    time.sleep(SETTLE_S)
    killed_at = time.time()
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    if scene == "spare":
        return _process_end(int(Path(f"{stamps}.pid").read_text())) - killed_at
    return _last_stamp(stamps, scene) - killed_at


def _process_end(pid: int) -> float:
    """When process ``pid`` is seen gone, looking every millisecond."""
    deadline = time.monotonic() + NOTICE_WAIT_S
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"spare: its process {pid} still runs {NOTICE_WAIT_S:g} s after the kill")
        time.sleep(0.001)
    return time.time()


def _last_stamp(stamps: Path, scene: str) -> float:
    """The last stamp, once no more will come: the owned actor's have stopped, the detached
    actor's one notice is written."""
    deadline = time.monotonic() + NOTICE_WAIT_S
    previous = None
    while time.monotonic() < deadline:
        text = stamps.read_text() if stamps.exists() else ""
        if text.endswith("\n") and (scene != "owned" or text == previous):
            return float(text.splitlines()[-1])
        previous = text
        time.sleep(POLL_S)
    raise SystemExit(f"{scene}: no last stamp within {NOTICE_WAIT_S:g} s of the kill")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RAY], env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        address = holder.stdout.readline().strip()
        with tempfile.TemporaryDirectory(prefix="rayfan-owner-death-") as tmp:
            windows: dict[str, list[float]] = {scene: [] for scene in SCENES}
            for _ in range(args.repeat):
                for scene, values in windows.items():
                    values.append(window_after_kill(address, scene, Path(tmp) / f"{scene}.txt"))
    finally:
        holder.communicate(input="", timeout=120)
    owned = statistics.median(windows["owned"])
    print(f"work going on after the driver's kill -9 (medians of {args.repeat}):")
    for scene, label in SCENES.items():
        window = statistics.median(windows[scene])
        runs = ", ".join(f"{w:.3f}" for w in windows[scene])
        print(f"  {label:58} {window:6.3f} s  {window / owned:5.1f}x  (runs: {runs})")


if __name__ == "__main__":
    main()
