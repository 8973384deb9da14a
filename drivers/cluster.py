"""Joining Ray and placing adapter actors: the one place that knows about Ray options."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray.actor import ActorHandle
from ray._private.utils import read_ray_address
from ray.exceptions import AuthenticationError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import actors
from actors.accounting.pricing import PriceTable
from actors.adapter.actor import MAX_CONCURRENCY, AdapterInfo
from actors.adapter.settings import EndpointSettings
from actors.errors import ConfigError
from actors.ratelimit.coordinator import LimitScope, ScopeJoin, new_run
from actors.ratelimit.limits import Limits
from actors.ratelimit.specs import CoordinatedLimitSpec, LimitSpec
from drivers.adapter_group import AdapterGroup, AdapterRecipe
from drivers.fanout import get_each
from drivers.spares import take_spares

if TYPE_CHECKING:
    from actors.adapter.retry import RetryPolicy  # the adapter imports it, with the SDK

log = logging.getLogger(__name__)

RUNNING_PROBE_S = 0.5
"""How long a Ray recorded as running on this machine gets to accept a connection."""
PLACEMENT_NOTICE_S = 15.0
"""Adapters not all up after this long are waiting for room: the user is told why nothing happens."""
JOIN_PROBE_S = 3.0
"""How long the cluster at a given address gets to accept a connection (Ray itself waits
minutes for an address where nothing answers)."""


def connect(address: str | None, *, join_only: bool = False) -> bool:
    """Join the cluster at ``address``; without one, ``RAY_ADDRESS`` (as ``ray job submit``
    sets it), else a Ray already running on this machine (``ray start --head`` once, and
    each run starts in seconds), else a new local one for this run. A no-op when already
    connected. An address where nothing answers fails at once. ``join_only`` (``rayfan
    status``): never start a Ray, and leave the workers' logs where they are. True if this
    call joined a Ray that outlives this process, where spare adapters can wait between
    runs (not through Ray Client, whose driver is another process)."""
    if ray.is_initialized():
        if log.isEnabledFor(logging.INFO):
            log.info("Ray: the one this process has joined already, %s", _describe_nodes())
        return False
    given = address or os.environ.get("RAY_ADDRESS")
    address = given or _running_here()
    _check_answers(address, join_only=join_only)
    try:
        with _working_directory(_PACKAGES_ROOT), _quiet_unless_given(address, given):
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=not join_only, include_dashboard=False)
    except AuthenticationError as error:
        raise ConfigError(
            f"the Ray cluster at {address or 'RAY_ADDRESS'} requires its token: set RAY_AUTH_MODE=token and"
            " RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) as on the cluster (`ray get-auth-token` there prints it)"
        ) from error
    except ConnectionError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"could not join the Ray cluster at {address or 'RAY_ADDRESS'}: {first_line} (check the address; a cluster"
            " with token authentication also needs RAY_AUTH_MODE=token and RAY_AUTH_TOKEN here)"
        ) from error
    if log.isEnabledFor(logging.INFO):  # -v: asking for the nodes is a call to the cluster
        joined = "the one `ray start` left running here" if given is None else address
        log.info("Ray: %s, %s", "a local one for this run" if address == "local" else f"joined {joined}", _describe_nodes())
    return address != "local" and not address.startswith("ray://")


_PACKAGES_ROOT = Path(actors.__file__).resolve().parent.parent
"""The directory this driver imported rayfan's packages from."""


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """Ray puts the driver's working directory first on its workers' ``sys.path``: a user's
    own ``actors/`` or ``drivers/`` folder there would shadow rayfan's packages in every
    adapter. Joined from rayfan's own directory, the workers import what this driver did."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _quiet_unless_given(address: str, given: str | None) -> Iterator[None]:
    """A Ray started here for this run, or the one ``ray start`` left here, turns on token
    authentication and says so at every join, to a user who did nothing wrong and has
    nothing to do: that notice is dropped. Joining a cluster named by address, every
    warning stays."""
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = notice.level
    if address == "local" or given is None:
        notice.setLevel(logging.ERROR)
    try:
        yield
    finally:
        notice.setLevel(level)


def _running_here() -> str:
    """"auto" if the Ray that ``ray start`` left running on this machine still answers; else
    "local", a new Ray for this run. Ray itself would try the address that ``ray start``
    recorded even after that cluster died, and hang for minutes. "auto", not the recorded
    address: finding the cluster itself, Ray also finds the token ``ray start`` left for
    it (a cluster with token authentication, Ray's default, refuses a driver given its
    address without ``RAY_AUTH_MODE=token``)."""
    recorded: str | None = read_ray_address()  # None without a record, whatever its annotation says
    if not recorded:
        return "local"
    return "auto" if _answers(recorded, RUNNING_PROBE_S) is True else "local"


def _answers(address: str, timeout_s: float) -> bool | None:
    """Whether something accepts a connection at ``[ray://]HOST:PORT``; None for an address
    of another form (``auto``), which only Ray can resolve."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def _check_answers(address: str, *, join_only: bool) -> None:
    if address == "local":
        if join_only:
            raise ConfigError("no Ray cluster runs on this machine: start one (`ray start --head`), or give --address or RAY_ADDRESS")
        return
    if _answers(address, JOIN_PROBE_S) is False:
        raise ConfigError(f"nothing answers at {address}: is the Ray cluster up, and is that its address?")


def start_adapters(
    count: int,
    *,
    endpoint: EndpointSettings,
    model: str,
    retry: RetryPolicy | None = None,
    limit: LimitSpec | None = None,
    prices: PriceTable | None = None,
    max_in_flight: int | None = None,
    cpus: float = 0.0,
    spares: bool = False,
) -> AdapterGroup:
    """K adapter actors spread over the nodes, once every one has started. ``endpoint`` was
    resolved on the driver (``drivers.endpoint.resolve_endpoint``); its key travels as a
    SecretStr, never in options or names that Ray lists. ``max_in_flight`` is shared out so
    that together the adapters never have more requests open (each gets at least one). The
    adapters are named after the run that joined the limit's scope, if any. With ``cpus``,
    each holds that many CPUs, and Ray (an autoscaler adding nodes for them) places them.
    With ``spares`` (and no ``cpus``), spare adapters waiting on the cluster are taken first
    (``drivers.spares``)."""
    shares = _shares(max_in_flight, count) if max_in_flight is not None else [MAX_CONCURRENCY] * count
    run = getattr(limit, "run", None) or new_run()
    recipe = AdapterRecipe(run=run, endpoint=endpoint, model=model, retry=retry, limit=limit, prices=prices, cpus=cpus)
    nodes: list[Any] = placements(count) if not cpus else ["SPREAD"] * count
    taken = take_spares(recipe, shares, nodes) if spares and not cpus else {}
    adapters = AdapterGroup(recipe, shares, nodes, taken)
    try:
        infos = _check_started(adapters)
    except BaseException:  # one could not start, or Ctrl-C: none is left behind
        for adapter in adapters:
            ray.kill(adapter)
        raise
    where = ", ".join(f"{info.name} on node {(info.node or '?')[:8]} ({info.max_in_flight} in flight)" for info in infos)
    log.info("adapters: %d to %s: %s", count, endpoint.display_url, where)
    return adapters


def placements(count: int) -> list[NodeAffinitySchedulingStrategy | str]:
    """Adapter ``i`` on node ``i`` mod the nodes that can hold an actor (Ray's ``SPREAD``
    alone put two of two adapters on one node of two, 5 times in 8). Soft: a node with no
    room left holds no adapter back. No such node yet (an autoscaler still to add
    workers): ``SPREAD``."""
    listed: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]  # Ray leaves it unannotated
    nodes = sorted(node["NodeID"] for node in listed if node["Alive"] and node["Resources"].get("CPU", 0) > 0)
    if not nodes:
        return ["SPREAD"] * count
    return [NodeAffinitySchedulingStrategy(nodes[index % len(nodes)], soft=True) for index in range(count)]


def _shares(total: int, count: int) -> list[int]:
    """``total`` split as evenly as whole numbers allow, each between 1 and an adapter's maximum."""
    return [min(MAX_CONCURRENCY, max(1, total // count + (index < total % count))) for index in range(count)]


def _check_started(adapters: list[ActorHandle[Any]]) -> list[AdapterInfo]:
    """Each adapter's status once it has started; ConfigError if one could not start (no API
    key on its node, say), so a run stops before it sends anything instead of writing an
    adapter_died record per request."""
    refs: list[ray.ObjectRef[Any]] = [adapter.status.remote() for adapter in adapters]
    if len(ray.wait(refs, num_returns=len(refs), timeout=PLACEMENT_NOTICE_S)[0]) < len(refs):
        log.warning("waiting for Ray to place %d adapters (an autoscaler may be adding nodes for their CPUs)", len(refs))
    infos = get_each(refs)
    for value in infos:
        if isinstance(value, RayActorError):
            raise ConfigError(f"an adapter could not start: {_reason(value)}")
    return infos


def _describe_nodes() -> str:
    listed: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]  # Ray leaves it unannotated
    alive = [node for node in listed if node["Alive"]]
    return f"{len(alive)} nodes, {sum(node['Resources'].get('CPU', 0) for node in alive):g} CPUs"


def _reason(error: RayActorError) -> str:
    """The last line of the traceback Ray wraps an actor's failed __init__ in."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def shared_limit(count: int, *, endpoint: EndpointSettings, model: str, limits: Limits) -> CoordinatedLimitSpec:
    """The scope's rate-limit coordinator (found, or created on first use) as the limit all
    ``count`` adapters share, once it has joined the run (see ``joining_limit``)."""
    spec, join = joining_limit(count, endpoint=endpoint, model=model, limits=limits)
    return spec.joined(join)


def joining_limit(count: int, *, endpoint: EndpointSettings, model: str, limits: Limits) -> tuple[CoordinatedLimitSpec, ScopeJoin]:
    """The scope's rate-limit coordinator as the limit all ``count`` adapters share, and the
    run's join of it, still to be answered: ``spec.joined(join)`` before sending. ``limits``
    are the given ones, the rest is learned from headers. The scope is the endpoint with its
    organization and project, the key and the model (for Azure, the deployment the model
    names). See ``Coordinator.join`` for how runs sharing a scope combine their limits."""
    scope = LimitScope.of(endpoint.pool_label, endpoint.api_key.get_secret_value(), model, limits=limits)
    given = ", ".join(f"{name} {value:,}" for name, value in (("RPM", limits.rpm), ("TPM", limits.tpm)) if value is not None)
    log.info("rate limits: scope %s (%s); given: %s; the rest learned from the server's headers", scope.name, model, given or "none")
    return CoordinatedLimitSpec.joining(scope, adapters=count)
