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
from collections.abc import Iterable
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
from autoft.urls import check_study_storage, redact_url, url_password

METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "worst_group_accuracy", "neg_cross_entropy")
Metric = Literal["accuracy", "macro_f1", "worst_group_accuracy", "neg_cross_entropy"]
PositiveFloat = Annotated[float, Field(gt=0)]
PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_PRESET = "digits"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


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
    size: int = Field(1000, ge=1, description="number of OOD-val examples used by the search")
    class_balanced: bool = Field(False, description="sample size // classes per class present")
    seed: int | None = Field(None, description="draws the subset; None = the root seed")


class EvalSetConfig(_Strict):
    """An extra evaluation shift given by the user: an image folder or a CSV manifest."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="letters, digits, '_', '.', '-'")
    kind: Literal["folder", "csv"]
    path: str
    allow_absolute_paths: bool = Field(
        False, description="csv only: let rows name images outside the CSV's folder (absolute or ../ paths)"
    )

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
    study_name: str = "autoft"
    seed: int | None = Field(None, description="seeds the sampler and the inner loop's batches; None = root seed")
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
    seed: int | None = Field(None, description="shuffling and captions of the final run; None = the root seed")

    @model_validator(mode="after")
    def _accum_divides(self) -> FinetuneConfig:
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by grad_accum {self.grad_accum}")
        return self


class WiseFTConfig(_Strict):
    alphas: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])

    @field_validator("alphas")
    @classmethod
    def _in_unit_interval(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 <= a <= 1.0 for a in value):
            raise ValueError(f"alphas must be a non-empty list within [0, 1], got {value}")
        return sorted(set(value))


class TrackingConfig(_Strict):
    mlflow_uri: str = Field("", description="'' = $MLFLOW_TRACKING_URI, else SQLite beside the run folders")
    experiment: str = "autoft"
    registered_model: str = "autoft-clip"


class AutoFTConfig(_Strict):
    preset: str = "custom"
    seed: int = Field(0, ge=0, description="the root seed: data splits, search and fine-tuning derive from it")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    metric: Metric = "accuracy"
    selection_metric: Metric | None = Field(None, description="metric for ID-val model selection; None = metric")
    methods: list[str] = Field(default_factory=lambda: ["zeroshot", "ft", "autoft"])
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
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
        lines.append(f"  {path}: {message}")
    return "invalid configuration:\n" + "\n".join(lines)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-5`` as a float (YAML 1.1 wants a dot: ``1.0e-5``)."""


_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _SCIENTIFIC, list("-+0123456789."))


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {error}") from None


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


def config_to_yaml(config: AutoFTConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def save_config(config: AutoFTConfig, path: str | Path) -> Path:
    from autoft.atomic import atomic_write_text

    return atomic_write_text(Path(path), config_to_yaml(config))
