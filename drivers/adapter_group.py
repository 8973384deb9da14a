"""A run's adapters, and a fresh one in place of each that dies.

Ray could restart a dead actor itself (``max_restarts``) with the arguments it was created
with, but it stores an argument over 100 KB (the endpoint settings carry a CA bundle read
from ``SSL_CERT_FILE``) in its object store and frees it soon after the start, so a restart
after a lost node failed; holding the object from the driver kept it, at the price of an
error line from Ray at every start. So adapters are never restarted by Ray: the dispatcher
asks the group for a replacement, a new actor made from the driver's own copy of the
settings, under the same name, wherever Ray can place it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray.actor import ActorHandle

from actors.accounting.pricing import PriceTable
from actors.adapter.actor import OpenAIAdapter
from actors.adapter.settings import EndpointSettings
from actors.ratelimit.coordinator import NAMESPACE
from actors.ratelimit.specs import LimitSpec

if TYPE_CHECKING:
    from actors.adapter.retry import RetryPolicy  # the adapter imports it, with the SDK

ADAPTER_NAME_PREFIX = "rayfan-adapter-"
REPLACEMENTS = 3
"""A dead adapter is replaced this many times; its lost work is sent again by the
dispatcher, never retried by Ray (``max_task_retries=0``), so it is counted."""


@dataclass(frozen=True)
class AdapterRecipe:
    """Everything an adapter of the run is made with, kept on the driver."""

    run: str
    endpoint: EndpointSettings
    model: str
    retry: RetryPolicy | None
    limit: LimitSpec | None
    prices: PriceTable | None
    cpus: float = 0.0
    """CPUs each adapter holds while it lives (``--adapter-cpus``); 0 leaves Ray's default for
    actors: one CPU to be placed, none once running, so a 0-CPU head takes none."""

    def start(self, index: int, max_in_flight: int, placement: Any, generation: int = 0) -> ActorHandle[Any]:
        adapter_class: Any = OpenAIAdapter  # @ray.remote(max_concurrency=...) hides its ActorClass from type checkers
        arguments = self.arguments(index, max_in_flight, generation)
        cpus = {"num_cpus": self.cpus} if self.cpus else {}
        options = adapter_class.options(
            name=arguments["name"], namespace=NAMESPACE, scheduling_strategy=placement, max_restarts=0, max_task_retries=0, **cpus
        )
        handle: ActorHandle[Any] = options.remote(**arguments)
        return handle

    def arguments(self, index: int, max_in_flight: int, generation: int = 0) -> dict[str, Any]:
        """What adapter ``index`` is made with (``Adapter``'s keyword arguments): a new actor's, or a taken spare's."""
        return {
            "endpoint": self.endpoint,
            "model": self.model,
            "name": adapter_name(self.run, index, generation),
            "retry": self.retry,
            "limit": self.limit,
            "prices": self.prices,
            "max_in_flight": max_in_flight,
        }


def adapter_name(run: str, index: int, generation: int = 0) -> str:
    """A run's adapter is a named actor in the ``rayfan`` namespace, so ``rayfan status``
    finds it; the run id is random, so the name tells nothing of the key or the files.
    Not detached: it goes with the driver that started it. A replacement's name says which
    one it is (``-0.1``): Ray may hold a dead actor's name a while."""
    return f"{ADAPTER_NAME_PREFIX}{run}-{index}" + (f".{generation}" if generation else "")


class AdapterGroup(list[ActorHandle[Any]]):
    """The run's adapters, in place: a replacement takes the dead one's index."""

    def __init__(self, recipe: AdapterRecipe, shares: list[int], placements: list[Any], taken: dict[int, ActorHandle[Any]] | None = None) -> None:
        """``taken``: spare adapters already made adapters of this run, by index; the others start here."""
        taken = taken or {}
        super().__init__(
            taken[index] if index in taken else recipe.start(index, share, placement)
            for index, (share, placement) in enumerate(zip(shares, placements))
        )
        self.recipe = recipe
        self._shares = shares
        self.replaced = [0] * len(shares)

    def replace(self, index: int) -> ActorHandle[Any] | None:
        """A new adapter in place of the dead one at ``index``; None once it was replaced
        ``REPLACEMENTS`` times (a task that kills every adapter it reaches, say)."""
        if self.replaced[index] >= REPLACEMENTS:
            return None
        self.replaced[index] += 1
        self[index] = self.recipe.start(index, self._shares[index], "SPREAD", generation=self.replaced[index])
        return self[index]
