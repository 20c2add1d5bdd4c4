"""The nine objective terms against hand computations, their gradient signs, and the weighted sum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from autoft.hparams import LOSS_NAMES
from autoft.losses import (
    LossBatch,
    ParameterAnchor,
    WeightedObjective,
    cross_entropy,
    dcm_confidence_min,
    dcm_reference,
    entropy,
    flyp_contrastive,
    l1_init,
    l1_zero,
    l2_init,
    l2_zero,
    multiclass_hinge,
)

# Five examples, three classes. Rows 0 and 2 are correct with all margins met; row 4 is correct but
# violates both margins; rows 1 and 3 are misclassified.
LOGITS = [
    [2.0, 0.5, -1.0],
    [0.2, 0.4, 0.1],
    [1.0, 3.0, 0.0],
    [0.0, -0.5, 0.3],
    [1.0, 1.5, 0.8],
]
LABELS = [0, 2, 1, 0, 1]
MISCLASSIFIED = [1, 3]


def _batch(requires_grad: bool = False) -> LossBatch:
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=requires_grad)
    return LossBatch(logits=logits, labels=torch.tensor(LABELS))


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def _row_entropy(row: list[float]) -> float:
    return -sum(p * math.log(p) for p in _softmax(row))


def _hand_ce() -> float:
    return sum(-math.log(_softmax(row)[y]) for row, y in zip(LOGITS, LABELS, strict=True)) / len(LABELS)


def _hand_hinge() -> float:
    total = 0.0
    for row, y in zip(LOGITS, LABELS, strict=True):
        total += sum(max(0.0, row[j] - row[y] + 1.0) for j in range(len(row)) if j != y)
    return total / len(LABELS)


def _hand_dcm() -> float:
    total = 0.0
    for row, y in zip(LOGITS, LABELS, strict=True):
        if max(range(len(row)), key=row.__getitem__) != y:
            total += _row_entropy(row)
    return total / len(LABELS)


# ---------------------------------------------------------------------------------------------
# Data terms: values
# ---------------------------------------------------------------------------------------------


def test_cross_entropy_matches_hand_computation() -> None:
    assert float(cross_entropy(_batch())) == pytest.approx(_hand_ce(), rel=1e-12)


def test_hinge_matches_hand_computation() -> None:
    # Rows 1 (1.1 + 1.3), 3 (0.5 + 1.3) and 4 (0.5 + 0.3) violate margins: (2.4 + 1.8 + 0.8) / 5.
    assert _hand_hinge() == pytest.approx(1.0)
    assert float(multiclass_hinge(_batch())) == pytest.approx(_hand_hinge(), rel=1e-12)


def test_entropy_matches_hand_computation_in_nats() -> None:
    expected = sum(_row_entropy(row) for row in LOGITS) / len(LOGITS)
    assert float(entropy(_batch())) == pytest.approx(expected, rel=1e-12)
    uniform = LossBatch(logits=torch.zeros(2, 4, dtype=torch.float64), labels=torch.tensor([0, 1]))
    assert float(entropy(uniform)) == pytest.approx(math.log(4), rel=1e-12)


def test_dcm_counts_only_misclassified_examples() -> None:
    expected = _hand_dcm()
    assert expected > 0
    assert float(dcm_reference(_batch())) == pytest.approx(expected, rel=1e-12)
    assert float(dcm_confidence_min(_batch())) == pytest.approx(-expected, rel=1e-12)
    all_correct = LossBatch(logits=torch.tensor(LOGITS, dtype=torch.float64), labels=torch.tensor([0, 1, 1, 2, 1]))
    assert float(dcm_reference(all_correct)) == 0.0


def _flyp_features(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(4, 6))
    caption = image + 0.3 * rng.normal(size=(4, 6))  # captions resemble their own image
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    caption /= np.linalg.norm(caption, axis=1, keepdims=True)
    return image, caption


def _hand_flyp(image: np.ndarray, caption: np.ndarray, scale: float) -> float:
    n = len(image)
    sims = [[scale * float(np.dot(image[i], caption[j])) for j in range(n)] for i in range(n)]
    image_to_text = sum(-math.log(_softmax(sims[i])[i]) for i in range(n)) / n
    columns = [[sims[i][j] for i in range(n)] for j in range(n)]
    text_to_image = sum(-math.log(_softmax(columns[j])[j]) for j in range(n)) / n
    return 0.5 * (image_to_text + text_to_image)


def _flyp_batch(image: np.ndarray, caption: np.ndarray, scale: float) -> LossBatch:
    return LossBatch(
        logits=torch.zeros(len(image), 3, dtype=torch.float64),
        labels=torch.zeros(len(image), dtype=torch.long),
        image_features=torch.tensor(image, requires_grad=True),
        caption_features=torch.tensor(caption, requires_grad=True),
        logit_scale=torch.tensor(scale, dtype=torch.float64, requires_grad=True),
    )


def test_flyp_is_symmetric_infonce_at_the_logit_scale() -> None:
    image, caption = _flyp_features()
    for scale in (1.0, 14.3, 100.0):
        value = float(flyp_contrastive(_flyp_batch(image, caption, scale)).detach())
        assert value == pytest.approx(_hand_flyp(image, caption, scale), rel=1e-10)
    # Symmetric: swapping the roles of images and captions gives the same loss.
    assert float(flyp_contrastive(_flyp_batch(caption, image, 14.3)).detach()) == pytest.approx(
        _hand_flyp(image, caption, 14.3), rel=1e-10
    )


def test_flyp_without_features_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match="image features, caption features and the logit scale"):
        flyp_contrastive(_batch())


# ---------------------------------------------------------------------------------------------
# Data terms: gradient signs
# ---------------------------------------------------------------------------------------------


def _grad(term, batch: LossBatch) -> np.ndarray:
    term(batch).backward()
    return batch.logits.grad.numpy()


def test_cross_entropy_gradient_raises_the_true_logit() -> None:
    grad = _grad(cross_entropy, _batch(requires_grad=True))
    rows = np.arange(len(LABELS))
    assert np.all(grad[rows, LABELS] < 0)
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12)  # softmax - onehot sums to 0


def test_hinge_gradient_on_the_true_logit_is_negative_when_margins_are_violated() -> None:
    grad = _grad(multiclass_hinge, _batch(requires_grad=True))
    n = len(LABELS)
    # Row 1: both margins violated -> true logit gets -2/B, each violator +1/B.
    np.testing.assert_allclose(grad[1], [1 / n, 1 / n, -2 / n], atol=1e-12)
    # Row 4: label 1, both others inside the margin.
    np.testing.assert_allclose(grad[4], [1 / n, -2 / n, 1 / n], atol=1e-12)
    # Rows 0 and 2 meet every margin: no gradient at all.
    np.testing.assert_array_equal(grad[[0, 2]], 0.0)


def test_entropy_minimisation_pushes_toward_the_argmax() -> None:
    batch = _batch(requires_grad=True)
    grad = _grad(entropy, batch)
    argmax = np.argmax(LOGITS, axis=1)
    assert np.all(grad[np.arange(len(LOGITS)), argmax] < 0)
    stepped = np.asarray(LOGITS) - 1.0 * grad
    for before, after, top in zip(LOGITS, stepped.tolist(), argmax, strict=True):
        assert _row_entropy(after) < _row_entropy(before)
        assert _softmax(after)[top] > _softmax(before)[top]


@pytest.mark.parametrize(("term", "entropy_goes"), [(dcm_reference, "down"), (dcm_confidence_min, "up")])
def test_dcm_sign_on_misclassified_examples(term, entropy_goes: str) -> None:
    batch = _batch(requires_grad=True)
    grad = _grad(term, batch)
    correct = [i for i in range(len(LABELS)) if i not in MISCLASSIFIED]
    np.testing.assert_array_equal(grad[correct], 0.0)  # the mask is on mistakes only
    stepped = (np.asarray(LOGITS) - 1.0 * grad).tolist()
    for i in MISCLASSIFIED:
        change = _row_entropy(stepped[i]) - _row_entropy(LOGITS[i])
        assert (change < 0) if entropy_goes == "down" else (change > 0)


def test_dcm_mask_is_detached_from_the_graph() -> None:
    # The argmax mask carries no gradient, so the gradient equals that of the masked entropy alone.
    batch = _batch(requires_grad=True)
    grad = _grad(dcm_reference, batch)
    logits = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(len(LABELS), dtype=torch.float64)
    mask[MISCLASSIFIED] = 1.0
    log_p = torch.log_softmax(logits, dim=1)
    (mask * -(log_p.exp() * log_p).sum(dim=1)).mean().backward()
    np.testing.assert_allclose(grad, logits.grad.numpy(), atol=1e-12)


def test_flyp_gradient_raises_the_scale_when_pairs_match_and_lowers_it_when_they_do_not() -> None:
    image, caption = _flyp_features()
    aligned = _flyp_batch(image, caption, 10.0)
    flyp_contrastive(aligned).backward()
    assert float(aligned.logit_scale.grad) < 0  # sharper is better when the diagonal dominates
    assert aligned.caption_features.grad.abs().sum() > 0  # the text side trains too (FLYP)
    shuffled = _flyp_batch(image, caption[[1, 2, 3, 0]], 10.0)
    flyp_contrastive(shuffled).backward()
    sims = image @ caption[[1, 2, 3, 0]].T
    assert np.all(np.diag(sims) < sims.max(axis=1))  # each image's own caption is not its best match
    assert float(shuffled.logit_scale.grad) > 0


# ---------------------------------------------------------------------------------------------
# Parameter terms
# ---------------------------------------------------------------------------------------------


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    return [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64)) for shape in shapes]


def _flat(tensors) -> np.ndarray:
    return np.concatenate([t.detach().numpy().ravel() for t in tensors])


def _moved(params: list[torch.nn.Parameter], seed: int = 1) -> ParameterAnchor:
    """An anchor at the current values, then the parameters moved away from it."""
    anchor = ParameterAnchor(params)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.5 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return anchor


def test_zero_norm_terms_match_hand_computation() -> None:
    params = _params()
    theta = _flat(params)
    assert theta.size == 25
    assert float(l1_zero(params).detach()) == pytest.approx(sum(abs(v) for v in theta) / 25, rel=1e-12)
    assert float(l2_zero(params).detach()) == pytest.approx(sum(v * v for v in theta) / 25, rel=1e-12)


def test_init_terms_measure_distance_to_the_anchor_clone() -> None:
    params = _params()
    theta0 = _flat(params)
    anchor = _moved(params)
    diff = _flat(params) - theta0
    assert np.abs(diff).min() > 0
    assert float(l1_init(params, anchor).detach()) == pytest.approx(sum(abs(v) for v in diff) / 25, rel=1e-12)
    assert float(l2_init(params, anchor).detach()) == pytest.approx(sum(v * v for v in diff) / 25, rel=1e-12)
    np.testing.assert_array_equal(_flat(anchor.reference), theta0)  # the anchor did not move with them


def test_init_terms_are_zero_at_theta0_with_finite_gradient() -> None:
    params = _params()
    anchor = ParameterAnchor(params)
    for term in (l1_init, l2_init):
        for p in params:
            p.grad = None
        value = term(params, anchor)
        value.backward()
        assert float(value.detach()) == 0.0
        assert np.all(np.isfinite(_flat(p.grad for p in params)))


@pytest.mark.parametrize("name", ["l1zero", "l2zero", "l1init", "l2init"])
def test_parameter_term_gradients_point_away_from_their_centre(name: str) -> None:
    params = _params()
    theta0 = _flat(params)
    anchor = _moved(params)
    term = {"l1zero": l1_zero, "l2zero": l2_zero, "l1init": l1_init, "l2init": l2_init}[name]
    term(params, anchor).backward()
    grad = _flat(p.grad for p in params)
    centre = 0.0 if name.endswith("zero") else theta0
    offset = _flat(params) - centre
    expected = np.sign(offset) / 25 if name.startswith("l1") else 2 * offset / 25
    np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-14)
    assert float(grad @ offset) > 0  # descent moves theta toward the centre


def test_init_terms_need_an_anchor() -> None:
    with pytest.raises(ValueError, match="anchor"):
        l2_init(_params(), None)


def test_anchor_refuses_aliases_of_the_live_parameters() -> None:
    params = _params()
    with pytest.raises(ValueError, match="alias"):
        ParameterAnchor.from_clones([p.data for p in params], params)
    with pytest.raises(ValueError, match="does not match"):
        ParameterAnchor.from_clones([p.detach().clone() for p in params[:2]] + [torch.zeros(8)], params)


@pytest.mark.parametrize("build", ["constructor", "from_clones"])
def test_anchor_is_a_clone_so_l2init_grows_after_an_optimizer_step(build: str) -> None:
    params = _params()
    if build == "constructor":
        anchor = ParameterAnchor(params)
    else:
        anchor = ParameterAnchor.from_clones([p.detach().clone() for p in params], params)
    theta0 = _flat(params)
    optimizer = torch.optim.SGD(params, lr=0.1)
    batch_loss = sum((p**3).sum() for p in params)  # any loss that moves every parameter
    batch_loss.backward()
    optimizer.step()
    diff = _flat(params) - theta0
    assert float(l2_init(params, anchor).detach()) == pytest.approx(float(diff @ diff) / 25, rel=1e-12)
    assert float(l2_init(params, anchor).detach()) > 0


# ---------------------------------------------------------------------------------------------
# WeightedObjective
# ---------------------------------------------------------------------------------------------


def _full_batch() -> LossBatch:
    image, caption = _flyp_features()
    batch = _batch()
    batch.logits = torch.tensor(LOGITS, dtype=torch.float64)[:4]
    batch.labels = torch.tensor(LABELS[:4])
    batch.image_features = torch.tensor(image)
    batch.caption_features = torch.tensor(caption)
    batch.logit_scale = torch.tensor(20.0, dtype=torch.float64)
    return batch


def test_weighted_objective_weights_each_term_by_name() -> None:
    params = _params()
    anchor = _moved(params)
    batch = _full_batch()
    weights = {name: 0.1 * (i + 1) for i, name in enumerate(LOSS_NAMES)}
    total, values = WeightedObjective(weights)(batch, params, anchor)
    single = {name: float(WeightedObjective({name: 1.0})(batch, params, anchor)[0].detach()) for name in LOSS_NAMES}
    assert set(values) == set(LOSS_NAMES)
    for name in LOSS_NAMES:
        assert float(values[name]) == pytest.approx(single[name], rel=1e-6)
    assert float(total.detach()) == pytest.approx(sum(weights[n] * single[n] for n in LOSS_NAMES), rel=1e-6)
    # Keyed by name, never by position: the order of the mapping does not matter.
    reversed_total, _ = WeightedObjective(dict(reversed(list(weights.items()))))(batch, params, anchor)
    assert float(reversed_total.detach()) == pytest.approx(float(total.detach()), rel=1e-6)
    assert float(single["ce"]) == pytest.approx(float(cross_entropy(batch)), rel=1e-6)
    assert float(single["hinge"]) == pytest.approx(float(multiclass_hinge(batch)), rel=1e-6)


def test_weighted_objective_total_is_differentiable_and_values_are_detached() -> None:
    batch = _batch(requires_grad=True)
    total, values = WeightedObjective({"ce": 2.0, "entropy": 0.5})(batch)
    total.backward()
    assert batch.logits.grad is not None
    assert all(not v.requires_grad for v in values.values())
    reference = _batch(requires_grad=True)
    (2.0 * cross_entropy(reference) + 0.5 * entropy(reference)).backward()
    np.testing.assert_allclose(batch.logits.grad.numpy(), reference.logits.grad.numpy(), rtol=1e-6)


def test_zero_weights_are_skipped_entirely() -> None:
    objective = WeightedObjective({"ce": 1.0, "flyp": 0.0, "l2init": 0.0, "hinge": 0.0})
    assert objective.weights == {"ce": 1.0}
    assert not objective.needs_captions
    assert not objective.needs_anchor
    # flyp and l2init would raise without features or an anchor: a zero weight never evaluates them.
    total, values = objective(_batch(), _params(), None)
    assert set(values) == {"ce"}
    assert float(total) == pytest.approx(_hand_ce(), rel=1e-6)


def test_objective_reports_what_it_needs() -> None:
    assert WeightedObjective({"ce": 1.0, "flyp": 0.3}).needs_captions
    assert WeightedObjective({"ce": 1.0, "l1init": 0.3}).needs_anchor
    assert not WeightedObjective({"ce": 1.0, "l1zero": 0.3}).needs_anchor


def test_objective_dcm_sign_option() -> None:
    reference, _ = WeightedObjective({"dcm": 1.0})(_batch())
    confidence_min, _ = WeightedObjective({"dcm": 1.0}, dcm_sign="confidence_min")(_batch())
    assert float(reference) == pytest.approx(_hand_dcm(), rel=1e-6)
    assert float(confidence_min) == pytest.approx(-_hand_dcm(), rel=1e-6)
    with pytest.raises(ValueError, match="dcm_sign must be 'reference' or 'confidence_min'"):
        WeightedObjective({"dcm": 1.0}, dcm_sign="upside_down")


def test_objective_rejects_unknown_names_and_empty_weights() -> None:
    with pytest.raises(ValueError, match=r"unknown loss names \['cross_entropy'\]; allowed: \['ce'"):
        WeightedObjective({"ce": 1.0, "cross_entropy": 1.0})
    with pytest.raises(ValueError, match="at least one"):
        WeightedObjective({})
    # All weights zero would leave nothing to differentiate (a confusing autograd error later).
    with pytest.raises(ValueError, match="every loss weight is zero"):
        WeightedObjective({"ce": 0.0, "hinge": 0.0})
