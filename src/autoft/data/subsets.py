"""Deterministic OOD-val subsets, optionally class-balanced (the reference never wired that in)."""

from __future__ import annotations

import numpy as np

from autoft.errors import DataError


def ood_val_indices(labels: np.ndarray, size: int, seed: int, class_balanced: bool = False) -> np.ndarray:
    """Pick ``size`` example indices from a split, as a function of ``seed`` only.

    Class-balanced: ``size // k`` per class for the k classes present (fewer where a class has fewer
    examples). Otherwise a uniform sample without replacement. Returned sorted.
    """
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise DataError("the OOD-val source split is empty; point data.ood_val at a split with examples")
    if size < 1:
        raise DataError(f"OOD-val size must be >= 1, got {size}")
    rng = np.random.default_rng(seed)
    if not class_balanced:
        chosen = rng.choice(len(labels), size=min(size, len(labels)), replace=False)
        return np.sort(chosen)
    classes = np.unique(labels)
    per_class = size // len(classes)
    if per_class == 0:
        raise DataError(
            f"a class-balanced OOD-val subset of {size} cannot cover {len(classes)} classes; "
            f"raise data.ood_val.size to at least {len(classes)}"
        )
    chosen = []
    for label in classes:
        members = np.flatnonzero(labels == label)
        chosen.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))
