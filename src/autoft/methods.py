"""Methods compared in one run: baselines, AutoFT, WiSE-FT variants and controls, as data.

- ``zeroshot``: the zero-shot classifier, no training.
- ``ft``: cross-entropy only; lr and wd searched on ID-val (the usual practice).
- ``flyp``: the contrastive loss only; lr and wd searched on ID-val.
- ``autoft``: the selected terms; weights, lr and wd searched on OOD-val.
- ``ft_oodval``: control; cross-entropy with lr and wd searched on the SAME OOD-val set as AutoFT.
- ``autoft_ce``: control; cross-entropy only at AutoFT's chosen lr and wd.
- ``<m>_wiseft``: WiSE-FT of method ``m`` with alpha chosen on ID-val.
Together the controls separate what the learned objective adds from picking a gentler lr.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoft.config import AutoFTConfig, SearchConfig

WISEFT_SUFFIX = "_wiseft"


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


BASE_METHODS: dict[str, MethodSpec] = {
    "zeroshot": MethodSpec("zeroshot", False, None, None, "id_val", "selection", finetunes=False),
    "ft": MethodSpec("ft", True, ("ce",), "ce", "id_val", "selection"),
    "flyp": MethodSpec("flyp", True, ("flyp",), "flyp", "id_val", "selection"),
    "autoft": MethodSpec("autoft", True, None, None, "ood_val", "objective"),
    "ft_oodval": MethodSpec("ft_oodval", True, ("ce",), "ce", "ood_val", "objective"),
    "autoft_ce": MethodSpec("autoft_ce", False, ("ce",), "ce", "ood_val", "objective", hparams_from="autoft"),
}


def is_wiseft(name: str) -> bool:
    return name.endswith(WISEFT_SUFFIX)


def base_of(name: str) -> str:
    return name.removesuffix(WISEFT_SUFFIX)


def validate_methods(methods: list[str]) -> None:
    """Unknown names, WiSE-FT of a method not run, or a control without its source fail early."""
    known = sorted([*BASE_METHODS, *(f"{m}{WISEFT_SUFFIX}" for m in BASE_METHODS if BASE_METHODS[m].finetunes)])
    for name in methods:
        base = base_of(name)
        if name not in known:
            raise ValueError(f"unknown method {name!r}; allowed: {known}")
        if is_wiseft(name) and base not in methods:
            raise ValueError(f"method {name!r} needs {base!r} in methods too")
        source = BASE_METHODS[base].hparams_from
        if source and source not in methods:
            raise ValueError(f"method {name!r} reuses {source!r}'s hyperparameters: add {source!r} to methods")


def searched_methods(methods: list[str]) -> list[str]:
    return [m for m in methods if not is_wiseft(m) and BASE_METHODS[m].searches]


def finetuned_methods(methods: list[str]) -> list[str]:
    return [m for m in methods if not is_wiseft(m) and BASE_METHODS[m].finetunes]


def method_search_config(config: AutoFTConfig, method: str) -> SearchConfig:
    """The search config of one method: its loss set and its own study name, same budget."""
    spec = BASE_METHODS[method]
    search = config.search.model_copy(deep=True)
    updates: dict = {"study_name": f"{config.search.study_name}-{method}"}
    if spec.losses is not None:
        updates.update(losses=list(spec.losses), anchor=spec.anchor, weight_bounds_per_term={})
    return SearchConfig.model_validate({**search.model_dump(), **updates})


def method_metric(config: AutoFTConfig, method: str) -> str:
    spec = BASE_METHODS[base_of(method)]
    return config.metric if spec.metric == "objective" else config.model_selection_metric
