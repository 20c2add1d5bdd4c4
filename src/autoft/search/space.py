"""The AutoFT search space, kept as data so presets can change bounds without code.

Default (the paper's): each selected loss weight except the anchor log-uniform in [1e-4, 10]; the
anchor fixed at 1.0 and never sampled; lr log-uniform in [lr0/100, lr0*100]; weight decay uniform in
[0, 1]; the data seed off (a lucky seed does not transfer to the final run).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import optuna

from autoft.config import Bounds, SearchConfig
from autoft.hparams import Hyperparams

HPARAMS_ATTR = "hparams"
SEED_RANGE = (0, 2**16)


@dataclass(frozen=True)
class Dimension:
    name: str
    low: float
    high: float
    log: bool
    integer: bool = False


@dataclass(frozen=True)
class SearchSpace:
    terms: tuple[str, ...]
    anchor: str
    dimensions: tuple[Dimension, ...]

    @classmethod
    def from_config(cls, config: SearchConfig) -> SearchSpace:
        dims = []
        for term in config.losses:
            if term == config.anchor:
                continue
            bounds: Bounds = config.weight_bounds_per_term.get(term, config.weight_bounds)
            dims.append(Dimension(f"w_{term}", bounds.low, bounds.high, log=True))
        dims.append(Dimension("lr", config.base_lr / config.lr_factor, config.base_lr * config.lr_factor, log=True))
        dims.append(Dimension("weight_decay", config.weight_decay.low, config.weight_decay.high, log=False))
        if config.search_seed:
            dims.append(Dimension("seed", *SEED_RANGE, log=False, integer=True))
        return cls(terms=tuple(config.losses), anchor=config.anchor, dimensions=tuple(dims))

    def sample(self, trial: optuna.Trial) -> Hyperparams:
        """Suggest every dimension and store the EFFECTIVE hyperparameters on the trial."""
        values: dict[str, float] = {}
        for dim in self.dimensions:
            if dim.integer:
                values[dim.name] = trial.suggest_int(dim.name, int(dim.low), int(dim.high))
            else:
                values[dim.name] = trial.suggest_float(dim.name, dim.low, dim.high, log=dim.log)
        weights = {term: 1.0 if term == self.anchor else values[f"w_{term}"] for term in self.terms}
        seed = values.get("seed")
        hparams = Hyperparams(
            weights=weights,
            lr=values["lr"],
            weight_decay=values["weight_decay"],
            seed=int(seed) if seed is not None else None,
        )
        trial.set_user_attr(HPARAMS_ATTR, hparams.to_dict())
        return hparams

    def to_dict(self) -> dict:
        return {"terms": list(self.terms), "anchor": self.anchor, "dimensions": [asdict(d) for d in self.dimensions]}


def trial_hparams(trial: optuna.trial.FrozenTrial) -> Hyperparams:
    """Read the effective hyperparameters back from a finished trial's user attrs."""
    if HPARAMS_ATTR not in trial.user_attrs:
        raise ValueError(f"trial {trial.number} has no '{HPARAMS_ATTR}' user attr: not an AutoFT trial")
    return Hyperparams.from_dict(trial.user_attrs[HPARAMS_ATTR])
