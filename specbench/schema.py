"""The base of every typed settings model: unknown keys are errors, values are frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A settings model that rejects unknown keys at every level (typos fail loudly)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
