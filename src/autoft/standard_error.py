"""The standard error of a validation score, taken over distinct source images.

A search ranks trials by one score on one small set, so how far that score would move on another draw
of the same kind of set decides whether a winner is a winner. The unit of sampling is the source image:
shifted copies of one image are not independent (docs/method.md).

* Mean metrics (accuracy, negative cross-entropy): the cluster-robust (sandwich) standard error of a
  mean, ``sqrt(sum_s (t_s - m k_s)^2) / N`` over source images s with example total ``t_s`` and count
  ``k_s`` (N examples, mean m). With one example per image this is exactly the binomial
  ``sqrt(p (1 - p) / n)`` for accuracy; with copies it is the binomial at ``n_distinct`` when an image's
  copies are all right or all wrong, and smaller as far as they differ (the copies' extra information).
* Other metrics (macro-F1, worst-group accuracy) are not means of per-example terms: a bootstrap over
  source images (``BOOTSTRAP_RESAMPLES`` multinomial reweightings of the images, fixed seed), vectorised
  over resamples so a trial pays milliseconds.
"""

from __future__ import annotations

import math

import numpy as np

from autoft.data.images import NO_GROUP

BOOTSTRAP_RESAMPLES = 200
MEAN_METRICS = ("accuracy", "neg_cross_entropy")


def _per_example(metric: str, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    if metric == "accuracy":
        return (logits.argmax(axis=1) == labels).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return log_probs[np.arange(len(labels)), labels].astype(np.float64)  # -CE per example


def clustered_mean_se(values: np.ndarray, sources: np.ndarray) -> float:
    """Cluster-robust standard error of ``values.mean()`` with ``sources`` as clusters."""
    values = np.asarray(values, dtype=np.float64)
    _, cluster = np.unique(np.asarray(sources), return_inverse=True)
    if len(values) == 0:
        return math.nan
    residual_totals = np.bincount(cluster, weights=values - values.mean())
    return float(math.sqrt(np.sum(residual_totals**2)) / len(values))


def _weighted_macro_f1(weights: np.ndarray, labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Macro-F1 per row of example ``weights`` [R, N], over the classes present in each resample."""
    classes = np.unique(np.concatenate([labels, predicted]))
    true = (labels[:, None] == classes[None]).astype(np.float64)
    pred = (predicted[:, None] == classes[None]).astype(np.float64)
    tp = weights @ (true * pred)
    support, predicted_count = weights @ true, weights @ pred
    denominator = support + predicted_count
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    present = support > 0
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _weighted_worst_group(
    weights: np.ndarray, labels: np.ndarray, predicted: np.ndarray, groups: np.ndarray
) -> np.ndarray:
    present = np.unique(groups[groups != NO_GROUP])
    correct = (labels == predicted).astype(np.float64)
    member = (groups[:, None] == present[None]).astype(np.float64)
    totals = weights @ member
    accuracy = np.divide(
        weights @ (member * correct[:, None]), totals, out=np.full_like(totals, np.inf), where=totals > 0
    )
    return accuracy.min(axis=1)


def bootstrap_se(
    metric: str,
    logits: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    sources: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> float:
    """Standard deviation of ``metric`` over bootstrap resamples of the source images."""
    _, cluster = np.unique(np.asarray(sources), return_inverse=True)
    n_clusters = int(cluster.max()) + 1 if len(cluster) else 0
    if n_clusters < 2:
        return math.nan
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=resamples).astype(np.float64)
    weights = counts[:, cluster]  # [R, N]: each example weighs as often as its image was drawn
    predicted = logits.argmax(axis=1)
    if metric == "macro_f1":
        values = _weighted_macro_f1(weights, labels, predicted)
    elif metric == "worst_group_accuracy":
        values = _weighted_worst_group(weights, labels, predicted, groups)
    else:
        raise ValueError(f"no bootstrap for metric {metric!r}")
    return float(np.std(values[np.isfinite(values)], ddof=1))


def score_se(
    metric: str, logits: np.ndarray, labels: np.ndarray, groups: np.ndarray, sources: np.ndarray | None = None
) -> float:
    """The standard error of ``metric`` on these predictions, over source images (None: one per example)."""
    labels = np.asarray(labels)
    sources = np.arange(len(labels)) if sources is None else np.asarray(sources)
    if len(sources) != len(labels):
        raise ValueError(f"{len(sources)} source ids for {len(labels)} examples")
    if metric in MEAN_METRICS:
        return clustered_mean_se(_per_example(metric, np.asarray(logits), labels), sources)
    return bootstrap_se(metric, np.asarray(logits), labels, np.asarray(groups), sources)
