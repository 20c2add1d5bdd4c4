"""Predictions and metrics: accuracy, macro-F1, worst-group accuracy, negative cross-entropy.

Metrics come from scikit-learn so they agree with WILDS' evaluators (which also use sklearn); it is imported
where a metric needs it (a search trial scores accuracy, and a step that never needs sklearn skips its ~1-3 s
import).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from autoft.data.images import NO_GROUP, LabeledImages
from autoft.data.loaders import DEFAULT_MEMORY_BUDGET_MB, ImageBatches, InputSettings, ordered_batches
from autoft.data.transforms import ImageTransform
from autoft.distributed import SINGLE, Dist


@dataclass
class Predictions:
    logits: np.ndarray  # [N, C] float32
    labels: np.ndarray  # [N]
    groups: np.ndarray  # [N], NO_GROUP where a split has no groups

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(axis=1)


def autocast_context(device: torch.device):
    """bf16 autocast on GPU (docs/method.md); a no-op context on CPU where bf16 would only be slower."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict_batches(
    model: torch.nn.Module,
    source: ImageBatches,
    *,
    batch_size: int = 256,
    desc: str | None = None,
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dist: Dist = SINGLE,
) -> Predictions:
    """Run ``model`` over a prepared split in eval mode; ``logits_fn`` may project logits (e.g. ImageNet-R).

    The source is built once and reused for every model and WiSE-FT alpha (no per-pass transforms). With
    several processes each rank predicts its chunk of the split and every rank gets all predictions.
    """
    was_training = model.training
    model.eval()
    start, stop = dist.chunk(len(source))
    chunks = []
    for batch in tqdm(ordered_batches(source, batch_size, start, stop), desc=desc, leave=False, disable=desc is None):
        with autocast_context(source.device):
            logits = model(batch.images)
        if logits_fn is not None:
            logits = logits_fn(logits)
        chunks.append(logits.float())
    model.train(was_training)
    local = torch.cat(chunks) if chunks else torch.zeros(0, 0, device=source.device)
    return Predictions(
        logits=dist.gather_varlen(local).cpu().numpy(),
        labels=source.labels.numpy(),
        groups=source.groups.numpy(),
    )


def predict(
    model: torch.nn.Module,
    images: LabeledImages,
    transform: ImageTransform,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    desc: str | None = None,
    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB,
) -> Predictions:
    """One pass over a split (callers that pass over a split again should keep an :class:`ImageBatches`)."""
    settings = InputSettings(torch.device(device), memory_budget_mb, num_workers)
    source = ImageBatches(images, transform, settings)
    return predict_batches(model, source, batch_size=batch_size, desc=desc, logits_fn=logits_fn)


def accuracy(pred: Predictions) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(pred.labels, pred.predicted))


def macro_f1(pred: Predictions) -> float:
    """Macro-F1 over the classes present in the labels (WILDS' `F1-macro_all` convention)."""
    from sklearn.metrics import f1_score

    return float(f1_score(pred.labels, pred.predicted, average="macro", labels=np.unique(pred.labels), zero_division=0))


def worst_group_accuracy(pred: Predictions) -> float:
    """Lowest accuracy over the groups present (e.g. FMoW regions)."""
    present = np.unique(pred.groups[pred.groups != NO_GROUP])
    if len(present) == 0:
        raise ValueError("worst-group accuracy needs group ids, and this split has none")
    correct = pred.predicted == pred.labels
    return float(min(correct[pred.groups == g].mean() for g in present))


def neg_cross_entropy(pred: Predictions) -> float:
    logits = torch.from_numpy(pred.logits)
    return -float(F.cross_entropy(logits, torch.from_numpy(pred.labels)))


METRIC_FUNCTIONS: dict[str, Callable[[Predictions], float]] = {
    "accuracy": accuracy,
    "macro_f1": macro_f1,
    "worst_group_accuracy": worst_group_accuracy,
    "neg_cross_entropy": neg_cross_entropy,
}


def metric_value(name: str, pred: Predictions) -> float:
    if name not in METRIC_FUNCTIONS:
        raise ValueError(f"unknown metric {name!r}; allowed: {sorted(METRIC_FUNCTIONS)}")
    return METRIC_FUNCTIONS[name](pred)


def all_metrics(pred: Predictions) -> dict[str, float]:
    """Every metric that applies to this split (worst-group only where groups exist)."""
    metrics = {"accuracy": accuracy(pred), "macro_f1": macro_f1(pred), "neg_cross_entropy": neg_cross_entropy(pred)}
    if np.any(pred.groups != NO_GROUP):
        metrics["worst_group_accuracy"] = worst_group_accuracy(pred)
    return metrics


def confusion(pred: Predictions, num_classes: int) -> np.ndarray:
    """[true, predicted] counts over all classes of the head, for reports."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(pred.labels, pred.predicted, labels=np.arange(num_classes))
