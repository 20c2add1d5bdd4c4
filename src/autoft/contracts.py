"""Every JSON file one step writes and another reads, as a typed, versioned model.

The prepared-data index, a search's result, a fine-tuning summary (and a multi-process fine-tuning job),
one evaluation, and results.json.
Steps may run on different machines and versions of the code: each file names its schema version,
and a reader refuses a file of another version (or a malformed one) with a message naming the file,
instead of failing later on a missing key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from autoft.atomic import atomic_write_text
from autoft.effective_robustness import ReferenceLine
from autoft.errors import DataError
from autoft.hparams import Hyperparams

VALIDATION_SPLITS = ("id_val", "ood_val")


class Contract(BaseModel):
    """A step's JSON output: ``save`` writes it atomically with its schema, ``load`` checks both."""

    model_config = ConfigDict(extra="forbid")
    SCHEMA: ClassVar[str]

    def to_json(self) -> str:
        return json.dumps({"schema": self.SCHEMA, **self.model_dump(mode="json")}, indent=1)

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(Path(path), self.to_json())

    @classmethod
    def parse(cls, payload: Any, source: str) -> Self:
        if not isinstance(payload, dict):
            raise DataError(f"{source}: expected a JSON object of schema {cls.SCHEMA}")
        found = payload.get("schema")
        if found != cls.SCHEMA:
            raise DataError(
                f"{source}: schema {found!r}, expected {cls.SCHEMA!r}; it was written by another version of "
                "autoft or by another step: re-run the step that writes it"
            )
        try:
            return cls.model_validate({k: v for k, v in payload.items() if k != "schema"})
        except ValidationError as error:
            raise DataError(f"{source} is not a valid {cls.SCHEMA} file: {error}") from None

    @classmethod
    def load(cls, path: str | Path) -> Self:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path} not found: run the step that writes it ({cls.SCHEMA}) first")
        try:
            payload = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{path} is not valid JSON: {error}") from None
        return cls.parse(payload, str(path))


class PreparedData(Contract):
    """``data.json``: the prepare step's index of split manifests (paths relative to its folder)."""

    SCHEMA: ClassVar[str] = "autoft.data/v1"
    INDEX: ClassVar[str] = "data.json"

    dataset: str
    class_names: list[str]
    templates: list[str]
    splits: dict[str, str]
    ood_val_set: str
    ood_tests: list[str]
    ood_val_indices_hash: str
    ood_val_distinct: int = Field(0, description="distinct source images in the search's OOD-val (0: not counted)")
    ood_val_examples: int = Field(0, description="examples in the search's OOD-val (copies included)")
    ood_val_holdout_distinct: int = Field(0, description="distinct images held out to re-score the best trials")
    ood_val_holdout_examples: int = 0
    extra: dict[str, Any] = Field(default_factory=dict)
    _folder: Path = PrivateAttr(default=Path("."))

    @property
    def folder(self) -> Path:
        return self._folder

    def manifest(self, split: str) -> Path:
        if split not in self.splits:
            raise DataError(f"no split {split!r} in {self._folder / self.INDEX}; have {sorted(self.splits)}")
        return self._folder / self.splits[split]

    @property
    def eval_sets(self) -> list[str]:
        """Every split a run evaluates: the ID splits, the search's OOD-val, then each OOD test shift."""
        return ["id_val", "id_test", "ood_val", *self.ood_tests]

    def save_in(self, folder: str | Path) -> Path:
        self._folder = Path(folder)
        return self.save(self._folder / self.INDEX)

    @classmethod
    def load_from(cls, folder: str | Path) -> PreparedData:
        folder = Path(folder)
        if not (folder / cls.INDEX).is_file():
            raise DataError(f"no {cls.INDEX} in {folder}: run `autoft step prepare` (or the prepare step) first")
        prepared = cls.load(folder / cls.INDEX)
        prepared._folder = folder
        return prepared


class TrialRecord(BaseModel):
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    distributions: dict[str, str] = Field(default_factory=dict, description="Optuna's JSON of each param's range")
    intermediate: dict[int, float] = Field(default_factory=dict, description="pruning reports by inner step")
    hparams: dict[str, Any] = Field(default_factory=dict, description="the effective hyperparameters (anchor included)")
    start: float | None = Field(None, description="when the trial started, seconds since the epoch (UTC)")
    seconds: float | None = Field(None, description="how long it ran (None while it runs)")
    se: float | None = Field(None, description="standard error of value over distinct source images")
    holdout: float | None = Field(None, description="the same model's score on the held-out OOD-val images")
    holdout_se: float | None = None


class RescoredTrial(BaseModel):
    """One of the search's best trials: its score on the search's OOD-val and on the held-out images."""

    number: int
    search_score: float
    search_se: float | None
    holdout_score: float | None
    holdout_se: float | None


class WinnerCheck(BaseModel):
    """Is the search's winner a winner? Its margin against one standard error, and the winner's curse."""

    best_se: float | None = Field(description="standard error of the best trial's score (over source images)")
    margin: float | None = Field(description="best score minus the next best; None with one trial")
    within_se: list[int] = Field(description="other trials whose score is within one SE of the best")
    flagged: bool = Field(description="the margin is within one SE: the winner is not told apart from them")
    top: list[RescoredTrial] = Field(description="the best trials by search score, best first")
    winners_curse: float | None = Field(
        description="mean of search minus held-out score over ``top`` (None without held-out images)"
    )
    winner_drop: float | None = Field(description="the winner's search minus held-out score")
    holdout_offset: float | None = Field(
        None,
        description="median of search minus held-out score over every complete trial: how much harder or easier "
        "the held-out images are; the best trials' drop beyond it is the winner's curse",
    )
    winner_holdout_rank: int | None = Field(None, description="the winner's rank by held-out score (1 = best)")
    rank_agreement: float | None = Field(
        None, description="Spearman's rho of search and held-out scores over the complete trials"
    )


class SearchResult(Contract):
    """A searched method's best hyperparameters and its study's trials (the select-best step's output)."""

    SCHEMA: ClassVar[str] = "autoft.search/v1"

    method: str
    hparams: Hyperparams
    best_value: float
    best_trial: int
    trials_complete: int
    storage: str = Field(description="the study's storage, password redacted")
    study_name: str
    study_id: int | None = Field(None, description="the study's id in its storage (optuna-dashboard links)")
    seconds: float = Field(0.0, description="first trial's start to the last one's end")
    trials: list[TrialRecord] = Field(default_factory=list)
    winner: WinnerCheck | None = Field(None, description="the winner's margin, its SE and the re-scored best trials")


class EpochRecord(BaseModel):
    epoch: int
    train_loss: float
    id_val: float
    lr: float
    terms: dict[str, float] = Field(default_factory=dict)


class WiseFTChoice(BaseModel):
    """How a method's WiSE-FT alpha was chosen (``wiseft.select_on``) and the alpha it got."""

    select_on: str = Field(description="'ood_val' or 'id_val' (the best alpha there; ties: the larger) or 'fixed'")
    alphas: list[float] = Field(description="the alphas scored (empty for a fixed alpha)")
    values: list[float] = Field(description="the score of each alpha on select_on's split")
    best_alpha: float


class GridPoint(BaseModel):
    """One full fine-tune of a grid-tuned baseline (``ft``, ``flyp``)."""

    lr: float
    weight_decay: float
    best_epoch: int
    best_id_val: float
    epochs_run: int
    stopped_early: bool
    chosen: bool = False


class FinetuneSummary(Contract):
    """What the fine-tune step did: the hyperparameters, each epoch, the kept epoch and the WiSE-FT alpha."""

    SCHEMA: ClassVar[str] = "autoft.finetune/v2"
    FILE: ClassVar[str] = "finetune.json"

    method: str
    hparams: Hyperparams
    best_epoch: int
    best_id_val: float
    peak_lr: float
    history: list[EpochRecord]
    wiseft: WiseFTChoice
    seconds: float = 0.0
    fingerprint: dict[str, str] = Field(default_factory=dict, description="what the run depended on, hashed")
    processes: int = Field(1, ge=1, description="how many processes (DDP ranks) trained it")
    stopped_early: bool = Field(False, description="ended before finetune.epochs (baselines.patience)")
    grid: list[GridPoint] = Field(
        default_factory=list, description="grid-tuned baselines: every lr tried; the chosen one is this run"
    )


class FinetuneJob(Contract):
    """A multi-process fine-tuning step's arguments, handed from the launcher to each torchrun process."""

    SCHEMA: ClassVar[str] = "autoft.finetune-job/v1"
    FILE: ClassVar[str] = "finetune_job.json"

    config: dict[str, Any] = Field(description="the resolved config (autoft.config.config_to_dict)")
    data_dir: str
    zeroshot_dir: str
    method: str
    hparams: Hyperparams
    out_dir: str
    resume: bool = False
    progress: bool = True
    record_curves: bool = Field(False, description="rank 0 appends the observer's calls to train/curves.jsonl")
    durable_root: str = Field("", description="where rank 0 copies each epoch's checkpoint (autoft.durable)")


class ModelEval(BaseModel):
    metrics: dict[str, float]
    value: float = Field(description="the run's metric (config.metric), the number reports show")
    confusion: list[list[int]]


class EvalResult(Contract):
    """Every method's model on one eval set; WiSE-FT methods' alpha curves on the test splits."""

    SCHEMA: ClassVar[str] = "autoft.eval/v1"

    eval_set: str
    metric: str
    models: dict[str, ModelEval]
    wiseft_curves: dict[str, dict[str, float]] = Field(default_factory=dict)
    seconds: float = 0.0


class MethodResult(BaseModel):
    id_val: float
    id_test: float
    ood: dict[str, float]
    ood_avg: float | None = Field(description="mean over the OOD test shifts; None when the data has none")
    hparams: Hyperparams | None = None
    wiseft_alpha: float | None = Field(None, description="a WiSE-FT row's alpha; 1.0 = its base, no interpolation")
    lr_grid: list[GridPoint] = Field(
        default_factory=list, description="ft/flyp: every lr of the grid, the chosen one marked"
    )
    effective_robustness: float | None = Field(
        None,
        description="OOD avg minus the dataset's reference line at this ID test value (Taori et al. 2020), "
        "a difference of fractions; None when no shipped reference line applies to the run",
    )


class SearchSummary(BaseModel):
    trials_complete: int
    best_value: float
    storage: str
    winner: WinnerCheck | None = None


class CurvePoint(BaseModel):
    id_test: float
    ood_avg: float | None


class Results(Contract):
    """``results.json``: the run's table (fractions in [0, 1]), searches, WiSE-FT curves and timing."""

    SCHEMA: ClassVar[str] = "autoft.results/v2"
    FILE: ClassVar[str] = "results.json"

    preset: str
    metric: str
    ood_val_set: str
    ood_val_indices_hash: str = ""
    ood_val_distinct: int = Field(0, description="distinct source images in the search's OOD-val")
    ood_val_examples: int = Field(0, description="its examples, shifted copies included")
    ood_val_holdout_distinct: int = Field(0, description="distinct held-out images the best trials are re-scored on")
    methods: dict[str, MethodResult]
    search: dict[str, SearchSummary] = Field(default_factory=dict)
    wiseft_curves: dict[str, dict[str, CurvePoint]] = Field(default_factory=dict)
    wiseft_select_on: str | None = Field(
        None, description="how every WiSE-FT alpha was chosen: 'ood_val', 'id_val' or 'fixed' (wiseft.select_on)"
    )
    timing_s: dict[str, float] = Field(default_factory=dict)
    reference_line: ReferenceLine | None = Field(
        None, description="the line the methods' effective robustness is measured against (None: none applies)"
    )
