"""Metrics against hand values and scikit-learn, and `predict` over a split."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from autoft.data.images import NO_GROUP, ArrayImages
from autoft.data.transforms import torchvision_eval_transform
from autoft.evaluate import (
    Predictions,
    accuracy,
    all_metrics,
    confusion,
    macro_f1,
    metric_value,
    neg_cross_entropy,
    predict,
    worst_group_accuracy,
)
from autoft.models.classifier import CLIPClassifier

LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
PREDICTED = np.array([0, 0, 1, 1, 2, 2, 2, 0, 3, 0])  # class 3 is predicted but never a label
GROUPS = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])


def _predictions(labels=LABELS, predicted=PREDICTED, groups=GROUPS, num_classes: int = 4) -> Predictions:
    logits = np.full((len(labels), num_classes), -1.0, dtype=np.float32)
    logits[np.arange(len(labels)), predicted] = 2.0
    return Predictions(logits=logits, labels=np.asarray(labels), groups=np.asarray(groups))


def test_accuracy_is_the_fraction_correct() -> None:
    assert accuracy(_predictions()) == pytest.approx(6 / 10)


def test_macro_f1_matches_hand_value_and_sklearn_over_present_classes() -> None:
    # class 0: tp 3, fp 1 (index 7), fn 1 (index 2): p 3/4, r 3/4 -> 0.75
    # class 1: tp 1, fp 1 (index 2), fn 1 (index 4) -> 0.5
    # class 2: tp 2, fp 1 (index 4), fn 2 (indices 7, 8): p 2/3, r 1/2 -> 4/7
    # class 3 is never a label, so it is not averaged (WILDS F1-macro_all).
    hand = (0.75 + 0.5 + 4 / 7) / 3
    pred = _predictions()
    assert macro_f1(pred) == pytest.approx(hand, rel=1e-12)
    assert macro_f1(pred) == pytest.approx(f1_score(LABELS, PREDICTED, average="macro", labels=[0, 1, 2]))
    assert macro_f1(pred) != pytest.approx(f1_score(LABELS, PREDICTED, average="macro"))


def test_macro_f1_of_a_class_never_predicted_counts_as_zero() -> None:
    pred = _predictions(labels=[0, 0, 1, 1], predicted=[0, 0, 0, 0], groups=[NO_GROUP] * 4, num_classes=2)
    # class 0: p 1/2, r 1 -> 2/3; class 1: 0
    assert macro_f1(pred) == pytest.approx((2 / 3 + 0) / 2)


def test_worst_group_accuracy_is_the_lowest_group() -> None:
    # group 0: 3/4, group 1: 2/3, group 2: 1/3 (indices 7, 8 wrong, 9 right)
    assert worst_group_accuracy(_predictions()) == pytest.approx(1 / 3)
    ungrouped_elements = GROUPS.copy()
    ungrouped_elements[7:] = NO_GROUP  # examples without a group are ignored, not a group of their own
    assert worst_group_accuracy(_predictions(groups=ungrouped_elements)) == pytest.approx(2 / 3)


def test_worst_group_accuracy_without_groups_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs group ids"):
        worst_group_accuracy(_predictions(groups=np.full(10, NO_GROUP)))


def test_neg_cross_entropy_matches_a_hand_computation() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 2, 1, 0])
    pred = Predictions(logits=logits, labels=labels, groups=np.full(6, NO_GROUP))
    hand = 0.0
    for row, y in zip(logits.astype(np.float64), labels, strict=True):
        hand += math.log(sum(math.exp(v) for v in row)) - row[y]
    assert neg_cross_entropy(pred) == pytest.approx(-hand / 6, rel=1e-5)
    assert neg_cross_entropy(pred) < 0


def test_confusion_matrix_covers_every_head_class() -> None:
    matrix = confusion(_predictions(), num_classes=5)
    assert matrix.shape == (5, 5)
    assert matrix.sum() == 10
    assert np.trace(matrix) == 6
    assert matrix[2, 3] == 1 and matrix[2, 0] == 1 and matrix[0, 1] == 1
    assert matrix[4].sum() == 0 and matrix[:, 4].sum() == 0


def test_metric_lookup_and_all_metrics() -> None:
    pred = _predictions()
    assert metric_value("worst_group_accuracy", pred) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="unknown metric 'top5'; allowed"):
        metric_value("top5", pred)
    assert set(all_metrics(pred)) == {"accuracy", "macro_f1", "neg_cross_entropy", "worst_group_accuracy"}
    ungrouped = all_metrics(_predictions(groups=np.full(10, NO_GROUP)))
    assert set(ungrouped) == {"accuracy", "macro_f1", "neg_cross_entropy"}
    assert ungrouped["accuracy"] == pytest.approx(0.6)


def test_predict_returns_the_models_logits_in_eval_mode(
    tiny_classifier: CLIPClassifier, make_images: Callable[..., ArrayImages], eval_tf: Callable
) -> None:
    images = make_images(10, seed=3, groups=[0, 1] * 5)
    tiny_classifier.train()
    pred = predict(tiny_classifier, images, eval_tf, batch_size=4)
    assert tiny_classifier.training  # mode restored
    assert pred.logits.shape == (10, 3) and pred.logits.dtype == np.float32
    np.testing.assert_array_equal(pred.labels, images.labels)
    np.testing.assert_array_equal(pred.groups, [0, 1] * 5)
    reference = torchvision_eval_transform(tiny_classifier.image_spec)  # torchvision's per-sample pipeline
    batch = torch.stack([reference(torch.from_numpy(images.image(i)).permute(2, 0, 1)) for i in range(10)])
    tiny_classifier.eval()
    with torch.no_grad():
        expected = tiny_classifier(batch).numpy()
    np.testing.assert_allclose(pred.logits, expected, rtol=1e-4, atol=1e-4)
