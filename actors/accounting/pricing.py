"""Cost from the server's usage and a dated price table.

The table ships as ``prices.json`` (USD per 1M tokens, with the date it was read); a user
file in the same shape overrides or extends it. A model the table does not know costs
``None`` with a warning, never a silent 0, so a budget is not fooled by a missing price.

The Batch API has prices of its own (``batch``, read with ``for_batch``). A model with a
standard price and no batch row costs ``BATCH_DISCOUNT`` of it in a batch, as OpenAI and
Azure Global Batch charge: so a user file (or ``--price``) that reprices a model without
naming its batch price gets half of its own price, never the shipped batch row of a price
it replaced.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from actors.errors import ConfigError
from actors.models import Usage, describe_validation_error

log = logging.getLogger(__name__)

_PER_TOKEN = 1e-6
BATCH_DISCOUNT = 0.5
"""The share of the standard price that the Batch API charges (OpenAI: "50% off", every model)."""


class ModelPrice(BaseModel):
    """USD per 1M tokens; finite, since 1e999 reads as inf and no budget can hold it."""

    input: float = Field(ge=0, allow_inf_nan=False)
    cached_input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)

    def cost(self, usage: Usage) -> float:
        uncached = max(usage.prompt_tokens - usage.cached_tokens, 0)
        dollars_per_m = (
            uncached * self.input + usage.cached_tokens * self.cached_input + usage.completion_tokens * self.output
        )
        return dollars_per_m * _PER_TOKEN

    def worst_case(self, prompt_tokens: int, output_tokens: int) -> float:
        """The most a request can cost: no cache hits and every allowed output token."""
        return (prompt_tokens * self.input + output_tokens * self.output) * _PER_TOKEN

    def scaled(self, factor: float) -> ModelPrice:
        return ModelPrice(input=self.input * factor, cached_input=self.cached_input * factor, output=self.output * factor)


class PriceTable(BaseModel):
    as_of: str
    source: str = ""
    models: dict[str, ModelPrice]
    aliases: dict[str, str] = Field(default_factory=dict)
    """Names priced as another model: an Azure deployment as the model it serves."""
    batch: dict[str, ModelPrice] = Field(default_factory=dict)
    """Batch API prices, where they are not ``BATCH_DISCOUNT`` of the standard ones."""

    @classmethod
    def default(cls) -> PriceTable:
        text = resources.files("actors.accounting").joinpath("prices.json").read_text(encoding="utf-8")
        return cls.model_validate_json(text)

    @classmethod
    def with_overrides(cls, path: str | Path | None) -> PriceTable:
        """The shipped table, updated with a user's file (same shape; its models win)."""
        table = cls.default()
        if path is None:
            return table
        try:
            user = cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, ValidationError) as err:
            raise ConfigError(f"price file {path}: {err}") from err
        batch = {**_without(table.batch, user.models), **user.batch}
        return cls(as_of=user.as_of, source=user.source, models={**table.models, **user.models}, batch=batch)

    def with_command_line(self, prices: list[str], aliases: list[str]) -> PriceTable:
        """This table plus ``--price MODEL=IN,OUT[,CACHED]`` (USD per 1M tokens; cached input
        costs as input unless given) and ``--price-as NAME=MODEL``."""
        models = dict(self.models)
        for item in prices:
            name, _, numbers = item.partition("=")
            try:
                values = [float(number) for number in numbers.split(",")]
                if not name.strip() or len(values) not in (2, 3):
                    raise ValueError("expected MODEL=IN,OUT[,CACHED]")
                price = ModelPrice(input=values[0], output=values[1], cached_input=values[2] if len(values) == 3 else values[0])
            except ValidationError as err:
                raise ConfigError(f"--price {item!r}: {describe_validation_error(err)}") from None
            except ValueError as err:
                raise ConfigError(f"--price {item!r}: {err}") from None
            models[name.strip()] = price
        table = self.model_copy(update={"models": models, "batch": _without(self.batch, _named(prices))})
        named = dict(self.aliases)
        for item in aliases:
            name, _, model = (part.strip() for part in item.partition("="))
            if not name or table.lookup(model) is None:
                raise ConfigError(f"--price-as {item!r}: expected NAME=MODEL with a priced MODEL")
            named[name] = model
        return table.model_copy(update={"aliases": named})

    def for_batch(self) -> PriceTable:
        """The table of what the Batch API charges: the batch rows, else half the standard price."""
        models = {name: price.scaled(BATCH_DISCOUNT) for name, price in self.models.items()}
        return self.model_copy(update={"models": {**models, **self.batch}, "batch": {}})

    def lookup(self, model: str) -> ModelPrice | None:
        """An alias's model, else the exact name, else the longest known prefix (dated
        snapshots: gpt-4o-2024-08-06)."""
        model = self.aliases.get(model, model)
        if model in self.models:
            return self.models[model]
        prefixes = [name for name in self.models if model.startswith(name + "-")]
        return self.models[max(prefixes, key=len)] if prefixes else None

    def cost(self, model: str, usage: Usage) -> float | None:
        price = self.lookup(model)
        if price is None:
            _warn_unpriced(model, self.as_of)
            return None
        return price.cost(usage)


def _without(batch: dict[str, ModelPrice], repriced: Iterable[str]) -> dict[str, ModelPrice]:
    """The batch rows of models whose standard price was not just replaced."""
    replaced = set(repriced)
    return {name: price for name, price in batch.items() if name not in replaced}


def _named(prices: list[str]) -> set[str]:
    """The models ``--price MODEL=...`` items price."""
    return {item.partition("=")[0].strip() for item in prices}


@functools.cache
def _warn_unpriced(model: str, as_of: str) -> None:
    """Once per model and process: a million requests should not mean a million warnings."""
    log.warning("no price for model %r in the table of %s; cost_usd left empty", model, as_of)
