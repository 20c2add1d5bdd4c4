"""Deterministic OOD-val subsets, counted in distinct source images, optionally class-balanced.

An OOD-val source may hold several shifted copies of one image (the digits benchmark draws each held-out
digit in several families; CIFAR-10-C and ImageNet-C corrupt each test image many ways). Copies add
examples, not independent evidence, so a subset's size is a number of DISTINCT source images, and a
chosen image brings all its copies. A split's manifest names each example's source image in
``source_indices`` (rows of the underlying data); without it every example is its own image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from autoft.errors import DataError


def example_sources(manifest: dict[str, Any], num_examples: int) -> np.ndarray:
    """The source image of each example of a loaded split (the manifest's ``indices`` applied)."""
    base = np.asarray(manifest.get("indices", np.arange(num_examples)), dtype=np.int64)
    if len(base) != num_examples:
        raise DataError(f"manifest {manifest.get('name')!r}: {len(base)} indices for {num_examples} examples")
    if "source_indices" not in manifest:
        return base
    sources = np.asarray(manifest["source_indices"], dtype=np.int64)
    if len(base) and base.max() >= len(sources):
        raise DataError(f"manifest {manifest.get('name')!r}: source_indices is shorter than its examples")
    return sources[base]


def ood_val_indices(
    labels: np.ndarray,
    size: int,
    seed: int | Sequence[int],
    class_balanced: bool = False,
    sources: np.ndarray | None = None,
) -> np.ndarray:
    """Pick the examples of ``size`` distinct source images from a split, as a function of ``seed`` only.

    ``sources`` gives each example's source image (None: every example is its own). Class-balanced:
    ``size // k`` images per class for the k classes present (fewer where a class has fewer). Otherwise
    a uniform sample of images without replacement. Returns the indices of every example of the chosen
    images, sorted.
    """
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise DataError("the OOD-val source split is empty; point data.ood_val at a split with examples")
    if size < 1:
        raise DataError(f"OOD-val size must be >= 1, got {size}")
    sources = np.arange(len(labels)) if sources is None else np.asarray(sources)
    if len(sources) != len(labels):
        raise DataError(f"{len(sources)} source ids for {len(labels)} examples")
    # One entry per distinct image (its first example's label); with one example per image the draw is
    # the same as drawing examples.
    unique, first = np.unique(sources, return_index=True)
    order = np.argsort(first)
    unique, image_labels = unique[order], labels[first[order]]
    rng = np.random.default_rng(seed)
    if not class_balanced:
        chosen = rng.choice(len(unique), size=min(size, len(unique)), replace=False)
    else:
        classes = np.unique(image_labels)
        per_class = size // len(classes)
        if per_class == 0:
            raise DataError(
                f"a class-balanced OOD-val subset of {size} images cannot cover {len(classes)} classes; "
                f"raise data.ood_val.size to at least {len(classes)}"
            )
        chosen = np.concatenate(
            [
                rng.choice(members, size=min(per_class, len(members)), replace=False)
                for members in (np.flatnonzero(image_labels == label) for label in classes)
            ]
        )
    return np.flatnonzero(np.isin(sources, unique[chosen]))


def distinct_count(sources: np.ndarray) -> int:
    """How many distinct source images a set of examples holds."""
    return len(np.unique(np.asarray(sources)))
