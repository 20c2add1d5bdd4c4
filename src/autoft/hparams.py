"""The effective hyperparameters of a trial or of the final run, and the error for ones that diverge.

Kept free of torch so that steps which only read and write studies (create-study, select-best,
finalize) start in a fraction of a second instead of importing the training stack.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: these hyperparameters diverge."""


@dataclass
class Hyperparams:
    """The effective hyperparameters phi of one trial or of the final run."""

    weights: dict[str, float]
    lr: float
    weight_decay: float
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hyperparams:
        hp = cls(
            weights={str(k): float(v) for k, v in data["weights"].items()},
            lr=float(data["lr"]),
            weight_decay=float(data["weight_decay"]),
            seed=data.get("seed"),
        )
        if not hp.lr > 0 or not math.isfinite(hp.lr):
            raise ValueError(f"learning rate must be a positive finite number, got {hp.lr}")
        if hp.weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {hp.weight_decay}")
        return hp
