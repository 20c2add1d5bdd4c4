"""One typed configuration schema for every AutoFT stage, and the one way to resolve it.

A config is a preset or a YAML file plus ``KEY=VALUE`` overrides (dotted keys, YAML values),
validated here, at the edge, so that bad input fails before any compute with the field path, the bad
value and the allowed values. Types are strict: ``n_trials: yes`` is an error, not 1. Every run saves
the resolved config next to its outputs.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from autoft.data.options import OPTIONS_MODELS, DatasetOptions
from autoft.data.registry import known_datasets
from autoft.errors import ConfigError
from autoft.hparams import LOSS_NAMES
from autoft.methods import BASE_METHODS, ZEROSHOT, base_of, method_problems
from autoft.urls import check_location, check_study_storage, check_tracking_uri, redact_url, url_password

METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "worst_group_accuracy", "neg_cross_entropy")
Metric = Literal["accuracy", "macro_f1", "worst_group_accuracy", "neg_cross_entropy"]
PositiveFloat = Annotated[float, Field(gt=0)]
PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_PRESET = "digits"
# Seeds reach Optuna's sampler (numpy RandomState: below 2**32) after a worker index is added.
SEED_MAX = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
# Split names every prepared dataset defines; an eval set of the same name would silently replace one.
RESERVED_SPLIT_NAMES = ("id_train", "id_val", "id_test", "ood_val", "ood_val_source", "ood_val_holdout", "eval")


class _Strict(BaseModel):
    # NaN and infinity are never meaningful settings (lr=.inf would fail in the first optimizer step).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class Bounds(_Strict):
    """A closed numeric interval ``[low, high]``."""

    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("bounds must be finite numbers")
        if self.low > self.high:
            raise ValueError(f"inverted bounds: low={self.low} > high={self.high}; swap them")
        return self


class ModelConfig(_Strict):
    name: str = Field("autoft-tiny-vit", description="open_clip model config name")
    pretrained: str = Field(
        "",
        description="open_clip pretrained tag (e.g. 'openai'), a local weights file "
        "(.safetensors or a state dict), a gs:// URI, 'builtin:digits', or '' for random init",
    )
    head_mode: Literal["linear", "text"] = Field(
        "linear",
        description="'linear': train the zero-shot linear head; 'text': rebuild the head from the "
        "fine-tuned text tower (FLYP-style)",
    )
    templates: list[str] | None = Field(
        None,
        description="prompt templates; '{c}' is replaced by the class name; None = the dataset's own",
    )
    train_token_embedding: bool = Field(
        True,
        description="when flyp trains the text tower, train its token embedding too (vocabulary x width: 25 M "
        "parameters in ViT-B/16, 3.2 M in the tiny model, almost all rows unused by the prompts); false freezes it: "
        "see docs/performance.md for what that costs and changes",
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from autoft.models.names import check_model_name

        return check_model_name(value)

    @field_validator("pretrained")
    @classmethod
    def _pretrained_location(cls, value: str) -> str:
        return check_location(value, "", gcs=True, what="a tag, a local file or builtin:digits")

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("at least one template is needed")
        bad = [t for t in value if "{c}" not in t]
        if bad:
            raise ValueError(f"templates without the '{{c}}' class slot: {bad}")
        return value


class OodValConfig(_Strict):
    size: int = Field(
        1000,
        ge=1,
        description="distinct source images the search scores (an image brings all its shifted copies; "
        "capped by the source)",
    )
    class_balanced: bool = Field(False, description="sample size // classes images per class present")
    seed: Seed | None = Field(None, description="draws the subset; None = the root seed")
    holdout_size: int = Field(
        1000,
        ge=0,
        description="distinct source images held out from the search (disjoint from its OOD-val) on which "
        "every trial is also scored, to re-score the best trials (winner's curse); capped by what the "
        "data has; 0 = none",
    )
    rescore_top_k: int = Field(5, ge=1, description="how many of the search's best trials the report re-scores")


class EvalSetConfig(_Strict):
    """An extra evaluation shift given by the user: an image folder or a CSV manifest."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description=f"letters, digits, '_', '.', '-'; not a built-in split name ({', '.join(RESERVED_SPLIT_NAMES)})",
    )
    kind: Literal["folder", "csv"]
    path: str
    allow_absolute_paths: bool = Field(
        False, description="csv only: let rows name images outside the CSV's folder (absolute or ../ paths)"
    )

    @field_validator("name")
    @classmethod
    def _not_a_builtin_split(cls, value: str) -> str:
        if value in RESERVED_SPLIT_NAMES:
            raise ValueError(
                f"{value!r} is a built-in split name (it would replace that split); rename the eval set, "
                f"e.g. my_{value}; reserved: {list(RESERVED_SPLIT_NAMES)}"
            )
        return value

    @field_validator("path")
    @classmethod
    def _path_location(cls, value: str) -> str:
        return check_location(value, "", gcs=True, what="a local folder or CSV")

    @model_validator(mode="after")
    def _csv_only(self) -> EvalSetConfig:
        if self.allow_absolute_paths and self.kind != "csv":
            raise ValueError("allow_absolute_paths applies to kind: csv only")
        return self


class DataConfig(_Strict):
    dataset: str = Field("digits", description="a registered dataset (see `autoft.data.registry`)")
    root: str = Field("", description="dataset root (local path or gs://); '' = the built-in cache")
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="DataLoader workers per process for splits decoded per pass (larger than memory_budget_mb) "
        "and for the one-time decode of the others; 'auto' = the process's cores - 1, at most 8",
    )
    memory_budget_mb: int = Field(
        4096,
        ge=0,
        description="a split whose decoded images (uint8, at the model's input size or smaller) fit in this many MiB "
        "is decoded once and batched by indexing (on the GPU when training there); larger splits are decoded "
        "per pass by DataLoader workers; 0 = always per pass. Results do not depend on it",
    )
    ood_val: OodValConfig = Field(default_factory=OodValConfig)
    eval_sets: list[EvalSetConfig] = Field(default_factory=list)
    options: SerializeAsAny[DatasetOptions] = Field(
        default_factory=dict,  # type: ignore[arg-type]  # validated into the dataset's own model below
        validate_default=True,
        description="dataset-specific options; each dataset's own typed model (autoft.data.options)",
    )

    @field_validator("options", mode="before")
    @classmethod
    def _typed_options(cls, value: Any, info: ValidationInfo) -> Any:
        # Each dataset has its own options model; `dataset` is validated first (it is declared first).
        model = OPTIONS_MODELS.get(info.data.get("dataset", ""))
        if model is None or isinstance(value, model):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"must be a mapping of {info.data.get('dataset')!r} options, got {value!r}")
        try:
            return model.model_validate(value)
        except ValidationError as error:
            raise ValueError(_options_problems(error, model)) from None

    @field_validator("root")
    @classmethod
    def _root_location(cls, value: str) -> str:
        return check_location(value, "", gcs=True) if value.strip() else value

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in known_datasets():
            raise ValueError(f"unknown dataset {value!r}; allowed: {known_datasets()}")
        return value

    @field_validator("eval_sets")
    @classmethod
    def _unique_names(cls, value: list[EvalSetConfig]) -> list[EvalSetConfig]:
        names = [item.name for item in value]
        if len(set(names)) != len(names):
            raise ValueError(f"eval set names must be unique, got {names}")
        return value


def _options_problems(error: ValidationError, model: type[DatasetOptions]) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            message = f"unknown key; allowed keys: {sorted(model.model_fields)}"
        else:
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] != "value_error":
                message += f" (got {item['input']!r})"
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


class SearchConfig(_Strict):
    losses: list[str] = Field(default_factory=lambda: list(LOSS_NAMES))
    anchor: str = Field("ce", description="the loss term whose weight is fixed at 1.0")
    weight_bounds: Bounds = Field(default_factory=lambda: Bounds(low=1e-4, high=10.0))
    weight_bounds_per_term: dict[str, Bounds] = Field(default_factory=dict)
    base_lr: PositiveFloat = Field(1e-5, description="lr0; the lr is searched in [lr0/f, lr0*f]")
    lr_factor: float = Field(100.0, ge=1.0)
    weight_decay: Bounds = Field(default_factory=lambda: Bounds(low=0.0, high=1.0))
    search_seed: bool = Field(False, description="also search the data seed (off: it does not transfer)")
    n_trials: int = Field(100, ge=1, description="TOTAL trial budget across all workers")
    inner_steps: int = Field(10, ge=1)
    max_failed_trials: int = Field(0, ge=0, description="0 = n_trials; stop the search after this many failures")
    storage: str = Field("", description="'' = a journal file in the run folder, or an Optuna RDB URL")
    study_name: str = Field("autoft", min_length=1)
    seed: Seed | None = Field(None, description="seeds the sampler and the inner loop's batches; None = root seed")
    multivariate: bool = True
    constant_liar: bool = True
    heartbeat_interval: int = Field(0, ge=0, description="seconds; RDB storage only; 0 = off")
    grace_period: int = Field(0, ge=0, description="seconds before a silent trial is failed; 0 = 2x heartbeat")
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = Field(
        "none",
        description="stops unpromising trials early on OOD-val reports at inner-step rungs (Optuna's pruners): "
        "'successive_halving' / 'hyperband' report at pruner_min_steps x reduction_factor^k; 'median' every "
        "inner_steps / prune_reports steps. Each report is one OOD-val pass; pruned trials count in n_trials",
    )
    pruner_min_steps: int = Field(
        0, ge=0, description="successive_halving/hyperband: inner steps at the first rung; 0 = inner_steps // factor^2"
    )
    pruner_reduction_factor: int = Field(
        3, ge=2, description="successive_halving/hyperband: 1 in this many trials at a rung goes on to the next"
    )
    train_token_embedding: bool | None = Field(
        None,
        description="the trials' model.train_token_embedding (the final run keeps the model's); None = the model's. "
        "false: a nine-term trial about 1.5x faster, same ranking on digits (docs/results/multifidelity.md)",
    )
    pruning: bool = Field(False, description="the old switch: true = pruner: median (kept for old configs)")
    prune_reports: int = Field(4, ge=1, description="pruner 'median': intermediate OOD-val reports per trial")
    dcm_sign: Literal["reference", "confidence_min"] = Field(
        "reference",
        description="'reference': +H(p) on misclassified (as the authors' code); "
        "'confidence_min': -H(p), i.e. raise entropy on mistakes",
    )

    @field_validator("storage")
    @classmethod
    def _storage_syntax(cls, value: str) -> str:
        return check_study_storage(value, "storage") if value.strip() else value

    @model_validator(mode="before")
    @classmethod
    def _old_pruning_switch(cls, data: Any) -> Any:
        """``pruning: true`` (configs written before ``pruner``) means the median pruner."""
        if isinstance(data, dict) and data.get("pruning") is True:
            if data.get("pruner", "none") not in ("none", "median"):
                raise ValueError(
                    f"pruning: true is the old spelling of pruner: median, but pruner is {data['pruner']!r}; "
                    "drop pruning: true"
                )
            data = {**data, "pruner": "median", "pruning": False}
        return data

    @property
    def rung_min_steps(self) -> int:
        factor = self.pruner_reduction_factor
        return self.pruner_min_steps or max(1, self.inner_steps // (factor * factor))

    def report_steps(self) -> list[int]:
        """The inner steps after which a trial reports its OOD-val score to the pruner (each is a pass).

        Successive halving / Hyperband: min_steps x factor^k, only where at least (factor - 1) / factor of
        the budget is still ahead (a rung right before the end would cost a pass and save nothing).
        """
        if self.pruner == "none":
            return []
        if self.pruner == "median":
            every = max(self.inner_steps // self.prune_reports, 1)
            return list(range(every, self.inner_steps, every))
        steps, rung = [], self.rung_min_steps
        while rung * self.pruner_reduction_factor <= self.inner_steps:
            steps.append(rung)
            rung *= self.pruner_reduction_factor
        return steps

    @model_validator(mode="after")
    def _check_losses(self) -> SearchConfig:
        unknown = [name for name in self.losses if name not in LOSS_NAMES]
        if unknown:
            raise ValueError(f"unknown loss names {unknown}; allowed: {list(LOSS_NAMES)}")
        if len(set(self.losses)) != len(self.losses):
            raise ValueError(f"duplicate loss names in {self.losses}")
        if self.anchor not in self.losses:
            raise ValueError(f"anchor {self.anchor!r} must be one of the selected losses {self.losses}")
        unknown_bounds = [name for name in self.weight_bounds_per_term if name not in self.losses]
        if unknown_bounds:
            raise ValueError(f"weight_bounds_per_term names unselected losses {unknown_bounds}")
        for name, bounds in {"weight_bounds": self.weight_bounds, **self.weight_bounds_per_term}.items():
            if bounds.low <= 0:
                raise ValueError(f"{name}: loss weights are log-uniform, so low must be > 0 (got {bounds.low})")
        if self.pruner in ("successive_halving", "hyperband") and not self.report_steps():
            raise ValueError(
                f"pruner {self.pruner!r} has no rung below inner_steps={self.inner_steps} (first rung "
                f"{self.rung_min_steps} steps x reduction factor {self.pruner_reduction_factor} > inner_steps); "
                "lower pruner_min_steps or pruner_reduction_factor, raise inner_steps, or set pruner: none"
            )
        return self


class FinetuneConfig(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1, description="examples per optimizer step (split by grad_accum)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    warmup_steps: int = Field(500, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    lr: float | None = Field(None, gt=0, description="override the searched lr (normally unset)")
    seed: Seed | None = Field(None, description="shuffling and captions of the final run; None = the root seed")

    @model_validator(mode="after")
    def _accum_divides(self) -> FinetuneConfig:
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by grad_accum {self.grad_accum}")
        return self


class BaselinesConfig(_Strict):
    """The conventional baselines ``ft`` and ``flyp``: full fine-tunes over a small lr grid (no search)."""

    lr_grid: list[PositiveFloat] | None = Field(
        None,
        description="peak learning rates of the grid, one full fine-tune each, the best ID-val kept (ties: the "
        "smaller lr); None = search.base_lr x (1/3, 1, 3)",
    )
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay of every grid run (fixed, not searched)")
    patience: int = Field(
        0,
        ge=0,
        description="early stopping: a grid run stops after this many epochs without a new best ID-val; 0 = off "
        "(every run goes to finetune.epochs)",
    )

    @field_validator("lr_grid")
    @classmethod
    def _distinct(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("lr_grid needs at least one learning rate (or null for the default grid)")
        if len(set(value)) != len(value):
            raise ValueError(f"lr_grid lists a learning rate twice: {value}")
        return sorted(value)


class WiseFTConfig(_Strict):
    alphas: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])
    select_on: Literal["ood_val", "id_val", "fixed"] = Field(
        "ood_val",
        description="how EVERY method's alpha is chosen: the best alpha on OOD-val (the set AutoFT's search "
        "uses; the run's metric), on ID-val (the selection metric; it almost always picks 1.0), or 'fixed' = "
        "fixed_alpha",
    )
    fixed_alpha: float = Field(0.5, ge=0.0, le=1.0, description="the alpha of select_on: fixed")

    @field_validator("alphas")
    @classmethod
    def _in_unit_interval(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 <= a <= 1.0 for a in value):
            raise ValueError(f"alphas must be a non-empty list within [0, 1], got {value}")
        return sorted(set(value))


class TrackingConfig(_Strict):
    mlflow_uri: str = Field("", description="'' = $MLFLOW_TRACKING_URI, else SQLite beside the run folders")
    experiment: str = Field("autoft", min_length=1)
    registered_model: str = Field("autoft-clip", min_length=1)
    nested_trials: int = Field(
        5,
        ge=-1,
        description="best trials per searched method shown as nested MLflow runs (every trial is a row of the "
        "method run's search/trials.csv); 0 = none, -1 = all",
    )

    @field_validator("mlflow_uri")
    @classmethod
    def _tracking_scheme(cls, value: str) -> str:
        return check_tracking_uri(value, "")


class AutoFTConfig(_Strict):
    preset: str = "custom"
    seed: int = Field(
        0, ge=0, le=SEED_MAX, description="the root seed: data splits, search and fine-tuning derive from it"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    metric: Metric = "accuracy"
    selection_metric: Metric | None = Field(None, description="metric for ID-val model selection; None = metric")
    methods: list[str] = Field(default_factory=lambda: ["zeroshot", "ft", "autoft"])
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    wiseft: WiseFTConfig = Field(default_factory=WiseFTConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("methods")
    @classmethod
    def _runnable_methods(cls, value: list[str]) -> list[str]:
        problems = method_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @property
    def model_selection_metric(self) -> str:
        return self.selection_metric or self.metric

    # Seeds: one root seed; a component's own seed, when set, wins.
    @property
    def search_seed(self) -> int:
        return self.seed if self.search.seed is None else self.search.seed

    @property
    def finetune_seed(self) -> int:
        return self.seed if self.finetune.seed is None else self.finetune.seed

    @property
    def ood_val_seed(self) -> int:
        return self.seed if self.data.ood_val.seed is None else self.data.ood_val.seed

    @property
    def baseline_lr_grid(self) -> list[float]:
        """The lr grid of ``ft`` and ``flyp``: the configured one, else base_lr x (1/3, 1, 3)."""
        if self.baselines.lr_grid is not None:
            return list(self.baselines.lr_grid)
        base = self.search.base_lr
        return [float(f"{base / 3:.3g}"), base, float(f"{base * 3:.3g}")]

    def search_for(self, method: str) -> SearchConfig:
        """The search config of one searched method: its loss set, its own study name, the derived seed."""
        if method not in self.methods or not BASE_METHODS[base_of(method)].searches:
            searched = [m for m in self.methods if m in BASE_METHODS and BASE_METHODS[m].searches]
            raise ConfigError(f"method {method!r} has no search in this run; searched methods: {searched}")
        spec = BASE_METHODS[method]
        updates: dict[str, Any] = {"study_name": f"{self.search.study_name}-{method}", "seed": self.search_seed}
        if spec.losses is not None:
            updates.update(losses=list(spec.losses), anchor=spec.anchor, weight_bounds_per_term={})
        return SearchConfig.model_validate({**self.search.model_dump(), **updates})

    def metric_for(self, method: str) -> str:
        """The metric a method's search maximises: the run's metric on OOD-val, the selection metric on ID-val."""
        spec = BASE_METHODS[base_of(method)]
        return self.metric if spec.metric == "objective" else self.model_selection_metric

    def check_method(self, method: str, *, purpose: str) -> None:
        """A method named on a command line must be one this config runs (and fit the purpose)."""
        if method not in self.methods:
            raise ConfigError(f"--method {method!r} is not in this config's methods {self.methods}")
        if purpose == "finetune" and (method == ZEROSHOT or base_of(method) != method):
            allowed = [m for m in self.methods if m in BASE_METHODS and BASE_METHODS[m].finetunes]
            raise ConfigError(f"--method {method!r} is not fine-tuned; fine-tuned methods here: {allowed}")
        if purpose == "search":
            self.search_for(method)
        if purpose == "grid" and not (method in BASE_METHODS and BASE_METHODS[method].grid):
            allowed = [m for m in self.methods if m in BASE_METHODS and BASE_METHODS[m].grid]
            raise ConfigError(f"--method {method!r} has no lr grid; grid-tuned methods here: {allowed}")


# ----------------------------------------------------------------------------------------------
# Reading, overriding, resolving.
# ----------------------------------------------------------------------------------------------


def _format_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"] if not str(part).startswith("function-")) or "<root>"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; `autoft config show` prints every key)"
        elif item["type"] in ("literal_error", "int_type", "float_type", "bool_type", "string_type"):
            message = f"{message} (got {item.get('input')!r})"
        lines.append(f"{path}: {message}")
    return "invalid configuration: " + "; ".join(lines)


# Limits for every YAML document this project reads (configs, --set values, pipeline parameters): a config
# is a few KiB, a few levels deep, with a handful of aliases; a hostile file must not exhaust memory (an
# alias bomb expands exponentially) or the stack (deep nesting).
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000


class YamlRefused(yaml.YAMLError):
    """A YAML document over a limit, or with a duplicate key: refused before it is built."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-5`` as a float (YAML 1.1 wants a dot: ``1.0e-5``), with limits:
    nesting depth, expanded size (aliases counted as often as they are used) and no duplicate keys."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YamlRefused(f"nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expanded_size(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: PyYAML reports it itself
                    continue
                if duplicate:
                    line = key_node.start_mark.line + 1
                    raise YamlRefused(f"duplicate key {key!r} at line {line} (a later copy would silently win)")
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: yaml.Node) -> None:
    """Count nodes as construction would copy them out (an alias counts its whole target each time)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YamlRefused("an alias refers to the node that contains it (a recursive structure)")
        active.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_YAML_NODES:
                raise YamlRefused(f"expands to more than {MAX_YAML_NODES} values (an alias bomb?)")
        active.discard(key)
        sizes[key] = total
        return total

    size(root)


_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _SCIENTIFIC, list("-+0123456789."))


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's error as one line: the problem and where (its own message spans several lines)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        context = f"{error.context}; " if error.context else ""
        return f"{context}{error.problem}{where}"
    return " ".join(str(error).split())


@contextmanager
def _yaml_refusals(source: str) -> Iterator[None]:
    """Every way PyYAML (under our limits) refuses a document, as one ConfigError line naming ``source``."""
    try:
        yield
    except YamlRefused as error:
        raise ConfigError(f"{source} is refused: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {_yaml_problem(error)}") from None
    except RecursionError:
        raise ConfigError(f"{source} is refused: nested too deeply") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts (4300)
        raise ConfigError(f"{source} is refused: {' '.join(str(error).split())}") from None


def parse_yaml(text: str, source: str) -> Any:
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source} is {len(text)} characters; a config holds at most {MAX_YAML_BYTES} (1 MiB)")
    with _yaml_refusals(source):
        return yaml.load(text, Loader=_Loader)


def parse_yaml_documents(text: str, source: str, max_bytes: int = MAX_YAML_BYTES) -> list[Any]:
    """Every document of a multi-document YAML file (a compiled pipeline), under the same limits."""
    if len(text) > max_bytes:
        raise ConfigError(f"{source} is {len(text)} characters; at most {max_bytes} are read")
    with _yaml_refusals(source):
        return list(yaml.load_all(text, Loader=_Loader))


def split_assignment(item: str, what: str, example: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> ``(KEY, VALUE)``: the one parser behind --set, --model, --hparams and --param."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{what} {item!r}: use KEY=VALUE, e.g. {example}")
    return key.strip(), value


def parse_assignments(items: Iterable[str], what: str, example: str) -> dict[str, str]:
    """Several ``KEY=VALUE`` items as a mapping; a key given twice is an error, not a silent overwrite."""
    result: dict[str, str] = {}
    for item in items:
        key, value = split_assignment(item, what, example)
        if key in result:
            raise ConfigError(f"{what} {key!r} is given twice")
        result[key] = value
    return result


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (values parsed as YAML) to a raw config mapping; a copy is returned."""
    result = copy.deepcopy(raw)
    for override in overrides:
        key, text = split_assignment(override, "override", "search.n_trials=20")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {override!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = parse_yaml(text, f"the value of override {key!r}") if text.strip() else ""
    return result


def validate_config(raw: dict[str, Any]) -> AutoFTConfig:
    try:
        return AutoFTConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_error(error)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        if path.stat().st_size > MAX_YAML_BYTES * 4:  # refused by parse_yaml anyway; do not read gigabytes
            raise ConfigError(f"config file {path} is {path.stat().st_size} bytes; a config holds at most 1 MiB")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    return parse_config_text(text, str(path))


def parse_config_text(text: str, source: str) -> dict[str, Any]:
    """A config document (YAML or JSON) as a mapping; an empty one is an error, not a silent default run."""
    data = parse_yaml(text, source)
    if data is None:
        raise ConfigError(
            f"{source} is empty; give a config (`autoft config show --preset digits` prints a complete one) or "
            "use --preset NAME"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must hold a mapping at the top level (config keys), got {type(data).__name__}")
    return data


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {available_presets()}")
    return path


def resolve_config(
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    text: str | None = None,
    overrides: Iterable[str] = (),
    default_preset: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> AutoFTConfig:
    """``preset | file | text`` (else ``default_preset``, else the schema's defaults) + overrides -> validated.

    ``defaults`` fill top-level keys the source leaves out (a compiled pipeline's methods). The CLI, the
    pipeline steps and the benchmarks all resolve configs here.
    """
    given = [name for name, value in (("--preset", preset), ("--config", config_file), ("text", text)) if value]
    if len(given) > 1:
        raise ConfigError(f"give one config source, not {' and '.join(given)}")
    if text is not None:
        raw = parse_config_text(text, "the config text")
    elif config_file:
        raw = read_yaml(config_file)
    elif preset or default_preset:
        raw = read_yaml(preset_path(preset or default_preset))  # type: ignore[arg-type]
    else:
        raw = {}
    raw = {**(defaults or {}), **raw}
    return validate_config(apply_overrides(raw, overrides))


def urls_with_passwords(config: AutoFTConfig) -> list[tuple[str, str]]:
    """Every config value that is a URL with a password: (dotted key, the URL redacted)."""
    found: list[tuple[str, str]] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for child_key, child in value.items():
                walk(child, f"{key}.{child_key}" if key else str(child_key))
        elif isinstance(value, list):
            for index, child in enumerate(value):
                walk(child, f"{key}[{index}]")
        elif isinstance(value, str) and url_password(value):
            found.append((key, redact_url(value)))

    walk(config_to_dict(config), "")
    return found


def config_to_dict(config: AutoFTConfig) -> dict[str, Any]:
    """Plain types only (through JSON), so YAML and pipeline parameters hold no Python objects."""
    return json.loads(config.model_dump_json())


# Config keys whose value is a credential whatever its form (none in the schema today; dataset options and
# future keys are covered by name).
SECRET_KEY_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey", "credential")


def redact_config(value: Any, key: str = "") -> Any:
    """A plain config mapping with every credential hidden: URL passwords and secret query values
    (:func:`autoft.urls.redact_url`) and the values of keys named like a secret. The one redaction every
    resolved config written anywhere (artifacts, run folders, MLflow, the console) goes through."""
    if isinstance(value, dict):
        return {name: redact_config(child, str(name)) for name, child in value.items()}
    if isinstance(value, list):
        return [redact_config(child, key) for child in value]
    if isinstance(value, str):
        if value and any(word in key.lower() for word in SECRET_KEY_WORDS):
            return "***"
        return redact_url(value)
    return value


def config_to_yaml(config: AutoFTConfig) -> str:
    """The resolved config as YAML, credentials redacted (it is printed, logged and saved beside outputs)."""
    return yaml.safe_dump(redact_config(config_to_dict(config)), sort_keys=False)


def save_config(config: AutoFTConfig, path: str | Path) -> Path:
    from autoft.atomic import atomic_write_text

    return atomic_write_text(Path(path), config_to_yaml(config))
