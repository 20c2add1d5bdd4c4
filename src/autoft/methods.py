"""Methods compared in one run: baselines, AutoFT, WiSE-FT variants and controls, as data.

- ``zeroshot``: the zero-shot classifier, no training.
- ``ft``: cross-entropy only; a conventional fine-tune: full runs over the lr grid ``baselines.lr_grid`` at
  the fixed weight decay ``baselines.weight_decay``, best ID-val epoch and grid point (the paper's FT).
- ``flyp``: the contrastive loss only; the same grid and selection as ``ft``.
- ``autoft``: the selected terms; weights, lr and wd searched on OOD-val.
- ``ft_oodval``: control; cross-entropy with lr and wd searched on the SAME OOD-val set as AutoFT.
- ``autoft_ce``: control; cross-entropy only at AutoFT's chosen lr and wd.
- ``<m>_wiseft``: WiSE-FT of method ``m``; every method's alpha is chosen the same way
  (``wiseft.select_on``: OOD-val by default, ID-val, or a fixed alpha).
Together the controls separate what the learned objective adds from picking a gentler lr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

WISEFT_SUFFIX = "_wiseft"
ZEROSHOT = "zeroshot"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    searches: bool  # has its own study
    losses: tuple[str, ...] | None  # None: the config's selected terms
    anchor: str | None  # None: the config's anchor
    val_split: str  # the split the search scores: "ood_val" or "id_val"
    metric: str  # "objective" (config.metric) or "selection" (config.model_selection_metric)
    hparams_from: str | None = None  # reuse another method's searched lr/wd (controls)
    finetunes: bool = True
    grid: bool = False  # full fine-tunes over baselines.lr_grid, the best ID-val one kept (no search)


BASE_METHODS: dict[str, MethodSpec] = {
    "zeroshot": MethodSpec("zeroshot", False, None, None, "id_val", "selection", finetunes=False),
    "ft": MethodSpec("ft", False, ("ce",), "ce", "id_val", "selection", grid=True),
    "flyp": MethodSpec("flyp", False, ("flyp",), "flyp", "id_val", "selection", grid=True),
    "autoft": MethodSpec("autoft", True, None, None, "ood_val", "objective"),
    "ft_oodval": MethodSpec("ft_oodval", True, ("ce",), "ce", "ood_val", "objective"),
    "autoft_ce": MethodSpec("autoft_ce", False, ("ce",), "ce", "ood_val", "objective", hparams_from="autoft"),
}
ALL_METHODS: tuple[str, ...] = (
    *BASE_METHODS,
    *(f"{name}{WISEFT_SUFFIX}" for name, spec in BASE_METHODS.items() if spec.finetunes),
)


def is_wiseft(name: str) -> bool:
    return name.endswith(WISEFT_SUFFIX)


def base_of(name: str) -> str:
    return name.removesuffix(WISEFT_SUFFIX)


def method_problems(methods: list[str]) -> list[str]:
    """What is wrong with a method list (empty when it is runnable): unknown names, missing sources."""
    problems = []
    unknown = [name for name in methods if name not in ALL_METHODS]
    if unknown:
        problems.append(f"unknown methods {unknown}; allowed: {list(ALL_METHODS)}")
    if len(set(methods)) != len(methods):
        problems.append(f"{methods} lists a method twice")
    if not methods:
        problems.append(f"no methods given; allowed: {list(ALL_METHODS)}")
    for name in methods:
        if name in unknown:
            continue
        base = base_of(name)
        if is_wiseft(name) and base not in methods:
            problems.append(f"method {name!r} needs {base!r} in methods too")
        source = BASE_METHODS[base].hparams_from
        if source and source not in methods:
            problems.append(f"method {name!r} reuses {source!r}'s hyperparameters: add {source!r} to methods")
    return problems


def searched_methods(methods: list[str]) -> list[str]:
    return [m for m in methods if not is_wiseft(m) and BASE_METHODS[m].searches]


def grid_methods(methods: list[str]) -> list[str]:
    """The conventional baselines of a run: fine-tuned over the lr grid, selected on ID-val."""
    return [m for m in methods if not is_wiseft(m) and BASE_METHODS[m].grid]


def finetuned_methods(methods: list[str]) -> list[str]:
    return [m for m in methods if not is_wiseft(m) and BASE_METHODS[m].finetunes]


def hparams_source(method: str) -> str:
    """The searched method whose best hyperparameters ``method`` fine-tunes with (itself, or a control's source)."""
    return BASE_METHODS[base_of(method)].hparams_from or base_of(method)


ModelKind = Literal["zeroshot", "model", "wiseft"]


@dataclass(frozen=True)
class ModelSource:
    """Which saved classifier represents a method: the zero-shot one, or a fine-tune step's output."""

    kind: ModelKind  # "model": the fine-tuned weights; "wiseft": their WiSE-FT interpolation
    finetuned: str | None  # the fine-tuned method whose step produced it (None for zero-shot)


def model_source(method: str) -> ModelSource:
    """The one place that maps a method to its model (the runner's folders, the pipeline's artifacts)."""
    if method == ZEROSHOT:
        return ModelSource("zeroshot", None)
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {list(ALL_METHODS)}")
    return ModelSource("wiseft" if is_wiseft(method) else "model", base_of(method))
