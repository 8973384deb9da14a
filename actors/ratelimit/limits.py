"""Requests and tokens per minute of one scope: the value every part of rate limiting shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FrozenModel(BaseModel):
    """A message or value that never changes once made, and rejects fields it does not know."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Limits(FrozenModel):
    """Requests and tokens per minute for one scope; ``None`` = no limit known."""

    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0)

    @property
    def known(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def tightest(self, other: Limits) -> Limits:
        """Per dimension, the lower of two limits (a missing one does not count)."""
        return Limits(rpm=_lowest(self.rpm, other.rpm), tpm=_lowest(self.tpm, other.tpm))

    def share(self, parts: int) -> Limits:
        """One of ``parts`` equal shares, never rounded down to nothing."""
        return Limits(
            rpm=None if self.rpm is None else max(1, self.rpm // parts),
            tpm=None if self.tpm is None else max(1, self.tpm // parts),
        )


def _lowest(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return a if b is None else b
    return min(a, b)
