"""The effective hyperparameters phi of one trial or of the final run.

Kept free of torch so that steps which only read and write studies (create-study, select-best,
finalize) start in a fraction of a second instead of importing the training stack. A pydantic
dataclass: validated wherever it is built (a trial, a JSON file, a test), positional arguments allowed.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from pydantic import ValidationError, field_validator
from pydantic.dataclasses import dataclass

from autoft.errors import ConfigError

LOSS_NAMES: tuple[str, ...] = ("ce", "hinge", "entropy", "dcm", "flyp", "l1zero", "l2zero", "l1init", "l2init")


@dataclass
class Hyperparams:
    """Loss weights by term name, the (peak) learning rate, AdamW's weight decay, and the data seed if searched."""

    weights: dict[str, float]
    lr: float
    weight_decay: float
    seed: int | None = None

    @field_validator("weights")
    @classmethod
    def _known_terms(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"unknown loss names {unknown}; allowed: {list(LOSS_NAMES)}")
        if not value:
            raise ValueError("at least one loss weight is needed")
        if any(not math.isfinite(w) or w < 0 for w in value.values()):
            raise ValueError(f"loss weights must be finite and >= 0, got {value}")
        return value

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, value: float) -> float:
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"learning rate must be a positive finite number, got {value}")
        return value

    @field_validator("weight_decay")
    @classmethod
    def _nonnegative_wd(cls, value: float) -> float:
        if not value >= 0 or not math.isfinite(value):
            raise ValueError(f"weight decay must be >= 0 and finite, got {value}")
        return value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hyperparams:
        try:
            return cls(**data)
        except (ValidationError, TypeError) as error:
            raise ConfigError(f"invalid hyperparameters {data}: {error}") from None
