"""``rayfan status``: one screen of what rayfan is doing on a Ray cluster, from any machine that can join it.

Coordinators (detached, one per scope) and the adapters of running runs are named actors in
Ray's ``rayfan`` namespace, so they are found by name (``ray.util.list_named_actors``: no
dashboard, no state API) and asked directly: each coordinator for its snapshot, each
adapter for its status and counters. An actor that does not answer within
``ANSWER_WITHIN_S`` (restarting, busy dying) is named as such, never waited for.
"""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TextIO

import ray
from pydantic import BaseModel, Field
from ray.exceptions import RayActorError, RayTaskError

from actors.adapter.actor import AdapterInfo
from actors.adapter.stats import AdapterStats
from actors.adapter.spare import SPARE_NAME_PREFIX
from actors.errors import ConfigError, SpareNotTaken
from actors.ratelimit.coordinator import NAMESPACE, SCOPE_NAME_PREFIX
from actors.ratelimit.limits import Limits
from actors.ratelimit.protocol import CoordinatorSnapshot
from drivers.adapter_group import ADAPTER_NAME_PREFIX
from drivers.cluster import connect

ANSWER_WITHIN_S = 5.0
"""How long the actors together get to answer before those still silent are listed as such."""
CLEAR_SCREEN = "\x1b[H\x1b[2J"


class StatusExit(enum.IntEnum):
    SHOWN = 0
    NO_CLUSTER = 1
    NOTHING_RUNNING = 2


EXIT_CODES = (
    "exit codes:\n"
    f"  {StatusExit.SHOWN.value:<4}the status was printed (with --watch: until Ctrl-C)\n"
    f"  {StatusExit.NO_CLUSTER.value:<4}bad flags, or no Ray cluster could be joined (one line on stderr)\n"
    f"  {StatusExit.NOTHING_RUNNING.value:<4}the cluster has no rayfan coordinator or adapter (one line)"
)


class AdapterView(BaseModel):
    """One adapter of a run: what it holds now and what it has done."""

    run: str
    info: AdapterInfo
    stats: AdapterStats

    @property
    def done(self) -> int:
        return self.info.received - self.info.in_flight


class ClusterStatus(BaseModel):
    """Everything ``rayfan status`` shows, gathered at one moment."""

    scopes: list[CoordinatorSnapshot] = Field(default_factory=list)
    adapters: list[AdapterView] = Field(default_factory=list)
    silent: list[str] = Field(default_factory=list)
    """Named actors that did not answer in time (restarting, or exiting)."""
    idle_spares: int = 0
    """Spare adapters no run has taken yet (``drivers/spares.py``)."""

    @property
    def empty(self) -> bool:
        return not (self.scopes or self.adapters or self.silent)

    def runs(self) -> dict[str, list[AdapterView]]:
        grouped: dict[str, list[AdapterView]] = {}
        for view in sorted(self.adapters, key=lambda view: (view.run, _index(view.info.name))):
            grouped.setdefault(view.run, []).append(view)
        return grouped


def gather_status(answer_within_s: float = ANSWER_WITHIN_S) -> ClusterStatus:
    """Ask every rayfan actor on the joined cluster at once; what answers in time is shown."""
    scopes: dict[str, ray.ObjectRef[Any]] = {}
    adapters: dict[str, tuple[ray.ObjectRef[Any], ray.ObjectRef[Any]]] = {}
    silent: list[str] = []
    for name in _named_actors():
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:  # gone since it was listed (an expired coordinator, a finished run)
            continue
        if name.startswith(SCOPE_NAME_PREFIX):
            scopes[name] = handle.snapshot.remote()
        else:
            adapters[name] = (handle.status.remote(), handle.stats.remote())
    refs = [*scopes.values(), *(ref for pair in adapters.values() for ref in pair)]
    ready = set(ray.wait(refs, num_returns=len(refs), timeout=answer_within_s)[0]) if refs else set()
    status = ClusterStatus()
    for name, ref in sorted(scopes.items()):
        snapshot = _answer(ref, ready)
        if snapshot is None:
            silent.append(name)
        else:
            status.scopes.append(snapshot)
    for name, (info_ref, stats_ref) in sorted(adapters.items()):
        info, stats = _answer(info_ref, ready), _answer(stats_ref, ready)
        if info is _NOT_TAKEN:
            status.idle_spares += 1
        elif info is None or stats is None or stats is _NOT_TAKEN:
            silent.append(name)
        else:  # a taken spare goes by the adapter name its run gave it
            status.adapters.append(AdapterView(run=_run_of(info.name), info=info, stats=stats))
    status.silent = silent
    return status


def _named_actors() -> list[str]:
    """rayfan's named actors: coordinators, adapters and spares (anything else in the namespace is not ours)."""
    listed: list[dict[str, str]] = ray.util.list_named_actors(all_namespaces=True)
    return [
        entry["name"]
        for entry in listed
        if entry["namespace"] == NAMESPACE and entry["name"].startswith((SCOPE_NAME_PREFIX, ADAPTER_NAME_PREFIX, SPARE_NAME_PREFIX))
    ]


_NOT_TAKEN = object()
"""What a spare no run has taken answers instead of a status."""


def _answer(ref: ray.ObjectRef[Any], ready: set[ray.ObjectRef[Any]]) -> Any:
    """The value, or None when it did not come in time or its actor died meanwhile."""
    if ref not in ready:
        return None
    try:
        return ray.get(ref)
    except RayActorError:
        return None
    except RayTaskError as error:
        if isinstance(error.cause, SpareNotTaken):
            return _NOT_TAKEN
        raise


def _run_of(name: str) -> str:
    return name.removeprefix(ADAPTER_NAME_PREFIX).rpartition("-")[0]


def _index(name: str) -> int:
    index = name.rpartition("-")[2].partition(".")[0]  # a replacement's name ends in -INDEX.GENERATION
    return int(index) if index.isdigit() else -1


# -- the screen ----------------------------------------------------------------------


def render_status(status: ClusterStatus, *, at: datetime) -> str:
    """The screen: each scope, then each run's adapters; ``at`` dates it and the pauses."""
    runs = status.runs()
    adapters = sum(len(views) for views in runs.values())
    lines = [
        f"rayfan status at {at:%H:%M:%S}: {_count(len(status.scopes), 'rate-limit scope')},"
        f" {_count(len(runs), 'run')} with {_count(adapters, 'adapter')}"
    ]
    for snapshot in status.scopes:
        lines += ["", *_scope_lines(snapshot, at)]
    scope_of = {run: snapshot.scope for snapshot in status.scopes for run in snapshot.run_ids}
    for run, views in runs.items():
        lines += ["", *_run_lines(run, views, scope_of.get(run))]
    if status.idle_spares:
        lines += ["", f"{_count(status.idle_spares, 'spare adapter')} started, waiting for the next run"]
    if status.silent:
        lines += ["", f"not answering within {ANSWER_WITHIN_S:g} s (restarting, or exiting): {', '.join(status.silent)}"]
    return "\n".join(lines)


def _scope_lines(snap: CoordinatorSnapshot, at: datetime) -> list[str]:
    idle = "in use" if snap.idle_s is None else f"idle {snap.idle_s:,.0f} s (exits at {snap.idle_expiry_s:,.0f} s)"
    restarted = ", restarted by Ray (started empty)" if snap.restarted else ""
    return [
        f"scope {snap.scope}: {snap.model} at {snap.endpoint}",
        f"  limits   {_limit(snap, 'rpm')};  {_limit(snap, 'tpm')};  bursts of at most {snap.burst_s:.3g} s of the limit",
        f"  rate     {snap.requests_per_min:,.0f} requests/min, {snap.tokens_per_min:,.0f} tokens/min (last minute)",
        f"  tokens   {snap.reserved_tokens:,} reserved, {snap.used_tokens:,} used as the server counts ({snap.requests_sent:,} requests)",
        f"  state    {_state(snap, at)}; {snap.rate_limited:,} answered 429",
        f"  users    {_count(snap.runs, 'run')}{_listed(snap.run_ids)}, {_count(snap.clients, 'adapter')} heard from in the last minute; {idle}{restarted}",
    ]


def _limit(snap: CoordinatorSnapshot, dimension: str) -> str:
    def shown(limits: Limits) -> str:
        value = getattr(limits, dimension)
        return "none" if value is None else f"{value:,}"

    return f"{dimension.upper()} {shown(snap.limits)} (given {shown(snap.given)}, learned {shown(snap.learned)})"


def _state(snap: CoordinatorSnapshot, at: datetime) -> str:
    if snap.stopped is not None:
        return f"STOPPED: {snap.stopped.code} (nothing is sent; the next run reopens it)"
    if snap.paused_for_s > 0:
        return f"PAUSED until {at + timedelta(seconds=snap.paused_for_s):%H:%M:%S} ({snap.paused_for_s:.1f} s more)"
    return "sending"


def _listed(run_ids: list[str]) -> str:
    return f" ({', '.join(run_ids)})" if run_ids else ""


def _run_lines(run: str, views: list[AdapterView], scope: str | None) -> list[str]:
    """A run's adapters; ``scope``: the one whose coordinator lists the run (none for a run
    without a coordinated limit, or one its coordinator has not heard from for a minute)."""
    first = views[0].info
    lines = [
        f"run {run}: {first.model} at {first.endpoint}" + ("" if scope is None else f", in scope {scope}"),
        f"  {'adapter':<9}{'node':<10}{'in flight':>10}{'sending':>9}{'done':>10}{'failed':>8}{'retries':>9}{'429s':>7}{'cost':>12}",
    ]
    for view in views:
        lines.append(_adapter_row(str(_index(view.info.name)), (view.info.node or "-")[:8], [view]))
    if len(views) > 1:
        lines.append(_adapter_row("total", "", views))
    return lines


def _adapter_row(label: str, node: str, views: list[AdapterView]) -> str:
    def total(read: Callable[[AdapterView], float]) -> float:
        return sum(read(view) for view in views)

    return (
        f"  {label:<9}{node:<10}{total(lambda v: v.info.in_flight):>10,.0f}{total(lambda v: v.info.running):>9,.0f}"
        f"{total(lambda v: v.done):>10,.0f}{total(lambda v: v.stats.failed):>8,.0f}{total(lambda v: v.stats.retries):>9,.0f}"
        f"{total(lambda v: v.stats.rate_limited):>7,.0f}{'$' + format(total(lambda v: v.stats.cost_usd), ',.4f'):>12}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# -- the command ---------------------------------------------------------------------


def run_status(address: str | None, *, watch_s: float | None = None) -> int:
    """``rayfan status``: join the cluster (never start one), print the screen once, or
    redraw it every ``watch_s`` seconds until Ctrl-C."""
    out = sys.stdout  # looked up now: tests and tools swap it
    try:
        connect(address, join_only=True)
    except ConfigError as error:
        print(f"rayfan status: {error}", file=sys.stderr)
        return StatusExit.NO_CLUSTER
    if watch_s is None:
        return print_status(gather_status(), out)
    try:
        while True:
            status = gather_status()
            out.write(CLEAR_SCREEN if out.isatty() else "\n")
            print_status(status, out)
            out.flush()
            time.sleep(watch_s)
    except KeyboardInterrupt:
        return StatusExit.SHOWN


def print_status(status: ClusterStatus, out: TextIO) -> int:
    """The screen, or the one line for a cluster with nothing of rayfan's; the exit code."""
    if status.empty:
        print("no rayfan rate-limit scope or run on this Ray cluster", file=out)
        return StatusExit.NOTHING_RUNNING
    print(render_status(status, at=datetime.now().astimezone()), file=out)
    return StatusExit.SHOWN
