"""One AutoFT trial: reset to zero-shot, take inner steps with the trial's phi, score OOD-val."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import optuna
import torch

from autoft.data.images import LabeledImages
from autoft.data.loaders import DEFAULT_MEMORY_BUDGET_MB, BatchStream, ImageBatches, InputSettings
from autoft.data.transforms import ImageTransform
from autoft.evaluate import Predictions, metric_value, predict_batches
from autoft.models.classifier import CLIPClassifier
from autoft.search.attrs import HOLDOUT_ATTR, HOLDOUT_SE_ATTR, OOD_VAL_ATTR, SE_ATTR
from autoft.search.space import SearchSpace
from autoft.standard_error import score_se
from autoft.train import inner_loop


class TrialObjective:
    """Callable for ``study.optimize``; holds everything that persists across trials.

    The zero-shot weights are cached once as a state dict (a clone) and loaded in place per trial;
    the ID batch stream persists across trials; OOD-val is the WHOLE subset with the EVAL transform,
    decoded once (in memory when it fits the budget), so scoring a trial is forward passes only.
    ``report_steps`` are the pruner's rungs (``SearchConfig.report_steps()``): after those inner steps the
    trial reports its OOD-val score and stops if the pruner says so (Optuna records it PRUNED).
    """

    def __init__(
        self,
        model: CLIPClassifier,
        space: SearchSpace,
        stream: BatchStream,
        ood_val: LabeledImages,
        eval_transform: ImageTransform,
        *,
        metric: str,
        inner_steps: int,
        device: torch.device,
        dcm_sign: str = "reference",
        report_steps: Sequence[int] = (),
        eval_batch_size: int = 256,
        num_workers: int = 0,
        memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB,
        train_token_embedding: bool = True,
        ood_val_sources: np.ndarray | None = None,
        holdout: LabeledImages | None = None,
        holdout_sources: np.ndarray | None = None,
    ) -> None:
        if len(ood_val) == 0:
            raise ValueError("the OOD-val subset is empty; the search has nothing to score")
        if ood_val.class_names != model.class_names:
            raise ValueError(
                f"class mismatch: the head has {model.num_classes} classes, OOD-val {len(ood_val.class_names)}"
            )
        self.model = model
        self.zeroshot_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.space = space
        self.stream = stream
        self.ood_val = ImageBatches(ood_val, eval_transform, InputSettings(device, memory_budget_mb, num_workers))
        self.metric = metric
        self.inner_steps = inner_steps
        self.device = device
        self.dcm_sign = dcm_sign
        self.report_steps = frozenset(step for step in report_steps if 0 < step < inner_steps)
        self.eval_batch_size = eval_batch_size
        self.train_token_embedding = train_token_embedding
        settings = InputSettings(device, memory_budget_mb, num_workers)
        self.ood_val_sources = ood_val_sources
        self.holdout = ImageBatches(holdout, eval_transform, settings) if holdout is not None and len(holdout) else None
        self.holdout_sources = holdout_sources
        self._last: Predictions | None = None

    def score(self) -> float:
        self.model.prepare_for_eval()
        predictions = predict_batches(self.model, self.ood_val, batch_size=self.eval_batch_size)
        self._last = predictions
        return metric_value(self.metric, predictions)

    def _record_uncertainty(self, trial: optuna.Trial) -> None:
        """The final score's SE, and the held-out score of the same weights (forward passes only)."""

        def record(name: str, value: float) -> None:
            if math.isfinite(value):  # an undefined SE (a single image) is left out, not stored as NaN
                trial.set_user_attr(name, value)

        if self._last is not None:
            last = self._last
            record(SE_ATTR, score_se(self.metric, last.logits, last.labels, last.groups, self.ood_val_sources))
        if self.holdout is not None:
            held = predict_batches(self.model, self.holdout, batch_size=self.eval_batch_size)
            record(HOLDOUT_ATTR, metric_value(self.metric, held))
            record(HOLDOUT_SE_ATTR, score_se(self.metric, held.logits, held.labels, held.groups, self.holdout_sources))

    def __call__(self, trial: optuna.Trial) -> float:
        hparams = self.space.sample(trial)
        if hparams.seed is not None:
            torch.manual_seed(hparams.seed)

        def report(step: int) -> None:
            if step in self.report_steps:  # a rung: one OOD-val pass, then the pruner decides
                trial.report(self.score(), step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at inner step {step}")

        inner_loop(
            self.model,
            self.zeroshot_state,
            hparams,
            self.stream,
            self.inner_steps,
            device=self.device,
            dcm_sign=self.dcm_sign,
            on_step=report if self.report_steps else None,
            train_token_embedding=self.train_token_embedding,
        )
        value = self.score()
        if not math.isfinite(value):
            return math.nan  # Optuna marks the trial FAIL and the study goes on
        trial.set_user_attr(OOD_VAL_ATTR, value)
        self._record_uncertainty(trial)
        return value
