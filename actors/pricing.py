"""Cost from the server's usage and a dated price table.

The table ships as ``prices.json`` (USD per 1M tokens, with the date it was read); a user
file in the same shape overrides or extends it. A model the table does not know costs
``None`` with a warning, never a silent 0, so a budget is not fooled by a missing price.
"""

from __future__ import annotations

import functools
import json
import logging
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from actors.errors import ConfigError
from actors.models import Usage

log = logging.getLogger(__name__)

_PER_TOKEN = 1e-6


class ModelPrice(BaseModel):
    input: float = Field(ge=0)
    cached_input: float = Field(ge=0)
    output: float = Field(ge=0)

    def cost(self, usage: Usage) -> float:
        uncached = max(usage.prompt_tokens - usage.cached_tokens, 0)
        dollars_per_m = (
            uncached * self.input + usage.cached_tokens * self.cached_input + usage.completion_tokens * self.output
        )
        return dollars_per_m * _PER_TOKEN

    def worst_case(self, prompt_tokens: int, output_tokens: int) -> float:
        """The most a request can cost: no cache hits and every allowed output token."""
        return (prompt_tokens * self.input + output_tokens * self.output) * _PER_TOKEN


class PriceTable(BaseModel):
    as_of: str
    source: str = ""
    models: dict[str, ModelPrice]

    @classmethod
    def default(cls) -> PriceTable:
        text = resources.files("actors").joinpath("prices.json").read_text(encoding="utf-8")
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
        return cls(as_of=user.as_of, source=user.source, models={**table.models, **user.models})

    def lookup(self, model: str) -> ModelPrice | None:
        """Exact name first, then the longest known prefix (dated snapshots: gpt-4o-2024-08-06)."""
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


@functools.cache
def _warn_unpriced(model: str, as_of: str) -> None:
    """Once per model and process: a million requests should not mean a million warnings."""
    log.warning("no price for model %r in the table of %s; cost_usd left empty", model, as_of)
