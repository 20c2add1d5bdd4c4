"""OOD-val subsets: a function of the seed only, optionally class-balanced."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from autoft.data.images import ArrayImages
from autoft.data.subsets import ood_val_indices
from autoft.errors import DataError

IMBALANCED = np.array([0] * 90 + [1] * 10 + [5] * 4)  # classes 0, 1 and 5 present; 5 is rare


def test_subset_is_deterministic_from_the_seed() -> None:
    labels = np.arange(200) % 7
    for balanced in (False, True):
        first = ood_val_indices(labels, 50, seed=3, class_balanced=balanced)
        again = ood_val_indices(labels.copy(), 50, seed=3, class_balanced=balanced)
        other = ood_val_indices(labels, 50, seed=4, class_balanced=balanced)
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)
        assert np.all(np.diff(first) > 0)  # sorted, no repeats
        assert first.min() >= 0 and first.max() < 200


def test_uniform_subset_has_the_requested_size_capped_by_the_split() -> None:
    labels = np.arange(30) % 3
    assert len(ood_val_indices(labels, 12, seed=0)) == 12
    np.testing.assert_array_equal(ood_val_indices(labels, 1000, seed=0), np.arange(30))


def test_class_balanced_takes_size_over_k_per_class_present() -> None:
    chosen = ood_val_indices(IMBALANCED, 12, seed=0, class_balanced=True)
    picked = IMBALANCED[chosen]
    # k = 3 classes present -> 4 each; class 5 has exactly 4 examples.
    assert {label: int((picked == label).sum()) for label in (0, 1, 5)} == {0: 4, 1: 4, 5: 4}
    assert len(chosen) == 12
    uniform = IMBALANCED[ood_val_indices(IMBALANCED, 12, seed=0)]
    assert (uniform == 0).sum() > 4  # without balancing the majority class dominates


def test_class_balanced_takes_fewer_where_a_class_is_small() -> None:
    chosen = ood_val_indices(IMBALANCED, 30, seed=1, class_balanced=True)
    picked = IMBALANCED[chosen]
    # 30 // 3 = 10 per class: class 0 and 1 give 10, class 5 only has 4.
    assert {label: int((picked == label).sum()) for label in (0, 1, 5)} == {0: 10, 1: 10, 5: 4}


def test_class_balanced_too_small_for_the_classes_is_an_error() -> None:
    with pytest.raises(DataError, match=r"cannot cover 3 classes; raise data\.ood_val\.size to at least 3"):
        ood_val_indices(IMBALANCED, 2, seed=0, class_balanced=True)


def test_empty_source_or_zero_size_is_an_error() -> None:
    with pytest.raises(DataError, match="OOD-val source split is empty"):
        ood_val_indices(np.array([], dtype=np.int64), 10, seed=0)
    with pytest.raises(DataError, match="size must be >= 1"):
        ood_val_indices(np.arange(5), 0, seed=0)


def test_subset_of_a_split_keeps_labels_and_images_aligned(make_images: Callable[..., ArrayImages]) -> None:
    split = make_images(30, seed=5)
    indices = ood_val_indices(split.labels, 9, seed=2, class_balanced=True)
    subset = split.subset(indices)
    assert len(subset) == 9
    assert subset.class_names == split.class_names
    np.testing.assert_array_equal(subset.labels, split.labels[indices])
    assert np.bincount(subset.labels).tolist() == [3, 3, 3]
    for position, index in enumerate(indices):
        np.testing.assert_array_equal(subset.image(position), split.image(int(index)))
    with pytest.raises(DataError, match="out of range"):
        split.subset([0, 30])
