"""One typed configuration schema for every AutoFT stage.

Configs come from YAML (a preset) plus ``--set a.b=c`` overrides and are validated here, at the
edge, so that bad input fails before any compute with the field path and the allowed values.
Every run saves the resolved config next to its outputs.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

LOSS_NAMES: tuple[str, ...] = (
    "ce",
    "hinge",
    "entropy",
    "dcm",
    "flyp",
    "l1zero",
    "l2zero",
    "l1init",
    "l2init",
)
METRICS: tuple[str, ...] = ("accuracy", "macro_f1", "worst_group_accuracy", "neg_cross_entropy")

PositiveFloat = Annotated[float, Field(gt=0)]


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message names the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
        "(.safetensors or a state dict), a gs:// URI, or '' for random init",
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
    seed: int = 0


class EvalSetConfig(_Strict):
    """An extra evaluation shift given by the user: an image folder or a CSV manifest."""

    name: str
    kind: Literal["folder", "csv"]
    path: str


class DataConfig(_Strict):
    dataset: str = Field("digits", description="a registered dataset builder (see `autoft.data.registry`)")
    root: str = Field("", description="dataset root (local path or gs://); '' = the built-in cache")
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    num_workers: int = Field(0, ge=0)
    ood_val: OodValConfig = Field(default_factory=OodValConfig)
    eval_sets: list[EvalSetConfig] = Field(default_factory=list)
    options: dict[str, Any] = Field(
        default_factory=dict, description="dataset-specific options (shift families, severities, ...)"
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        from autoft.data.registry import known_datasets  # lazy: builders import this module

        known = known_datasets()
        if value not in known:
            raise ValueError(f"unknown dataset {value!r}; allowed: {known}")
        return value


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
    seed: int = 0
    multivariate: bool = True
    constant_liar: bool = True
    heartbeat_interval: int = Field(0, ge=0, description="seconds; RDB storage only; 0 = off")
    grace_period: int = Field(0, ge=0, description="seconds before a silent trial is failed; 0 = 2x heartbeat")
    pruning: bool = False
    prune_reports: int = Field(4, ge=1, description="intermediate OOD-val reports per trial when pruning")
    dcm_sign: Literal["reference", "confidence_min"] = Field(
        "reference",
        description="'reference': +H(p) on misclassified (as the authors' code); "
        "'confidence_min': -H(p), i.e. raise entropy on mistakes",
    )

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
        return self


class FinetuneConfig(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1, description="examples per optimizer step (split by grad_accum)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    warmup_steps: int = Field(500, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    lr: float | None = Field(None, gt=0, description="override the searched lr (normally unset)")
    seed: int = 0

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
    mlflow_uri: str = Field("", description="'' = sqlite:///<run root>/mlflow.db")
    experiment: str = "autoft"
    registered_model: str = "autoft-clip"


class AutoFTConfig(_Strict):
    preset: str = "custom"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    metric: Literal["accuracy", "macro_f1", "worst_group_accuracy", "neg_cross_entropy"] = "accuracy"
    selection_metric: Literal["accuracy", "macro_f1", "worst_group_accuracy", "neg_cross_entropy"] | None = Field(
        None, description="metric for ID-val model selection; None = same as metric"
    )
    methods: list[str] = Field(default_factory=lambda: ["zeroshot", "ft", "autoft"])
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    wiseft: WiseFTConfig = Field(default_factory=WiseFTConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    options: dict[str, Any] = Field(default_factory=dict, description="preset-specific extras")

    @property
    def model_selection_metric(self) -> str:
        return self.selection_metric or self.metric


def _format_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see `autoft config --help`)"
        elif item["type"] == "literal_error":
            message = f"{message} (got {item.get('input')!r})"
        lines.append(f"  {path}: {message}")
    return "invalid configuration:\n" + "\n".join(lines)


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _parse_scalar(text: str) -> Any:
    """Parse an override value with YAML rules, so `--set a=1e-5` is a float and `b=[x,y]` a list."""
    value = yaml.safe_load(text) if text.strip() else ""
    # YAML 1.1 (PyYAML) reads exponents without a dot, such as 1e-5, as strings.
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a raw config mapping (a copy is returned)."""
    result = copy.deepcopy(raw)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"bad override {override!r}: use KEY=VALUE, e.g. search.n_trials=20")
        node = result
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"bad override {override!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(value)
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
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> AutoFTConfig:
    """Load a preset or YAML file, apply ``--set`` overrides and validate."""
    raw = read_yaml(path) if path else {}
    return validate_config(apply_overrides(raw, overrides or []))


def config_to_yaml(config: AutoFTConfig) -> str:
    # Through JSON so that the YAML holds plain types only.
    return yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False)


def save_config(config: AutoFTConfig, path: str | Path) -> Path:
    from autoft.storage import atomic_write_text

    return atomic_write_text(Path(path), config_to_yaml(config))
