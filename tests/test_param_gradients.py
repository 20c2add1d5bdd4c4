"""The parameter terms' closed-form gradients (added to .grad after the backward) equal autograd's, term by
term and in weighted sums, and training with them takes the same AdamW steps as training through autograd."""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations

import pytest
import torch

import autoft.train as train_module
from autoft.config import FinetuneConfig
from autoft.data.images import ArrayImages
from autoft.data.loaders import BatchStream, ImageBatches, epoch_batches
from autoft.hparams import LOSS_NAMES, Hyperparams
from autoft.losses import (
    PARAM_TERMS,
    LossBatch,
    ParameterAnchor,
    WeightedObjective,
    add_parameter_gradients,
)
from autoft.models.classifier import CLIPClassifier
from autoft.train import FinetuneLoop, inner_loop

CPU = torch.device("cpu")


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    params = [torch.nn.Parameter(torch.randn(s, generator=generator, dtype=torch.float64)) for s in shapes]
    with torch.no_grad():
        params[1][2] = 0.0  # a weight exactly at zero: sign(0) = 0, as autograd's subgradient
    return params


def _anchor(params: list[torch.nn.Parameter]) -> ParameterAnchor:
    anchor = ParameterAnchor(params)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params[:2]:  # the third tensor stays at theta0: its init gradients are exactly zero
            p.add_(0.5 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return anchor


def _batch() -> LossBatch:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    return LossBatch(logits=logits, labels=torch.tensor([0, 1, 2, 0, 1, 2]))


WEIGHTINGS = [
    *({name: 0.7} for name in PARAM_TERMS),
    *({a: 0.3, b: 2.5} for a, b in combinations(PARAM_TERMS, 2)),
    {"ce": 1.0, "l1zero": 0.1, "l2zero": 0.02, "l1init": 3.0, "l2init": 0.5},
]


@pytest.mark.parametrize("weights", WEIGHTINGS, ids=lambda w: "+".join(w))
def test_closed_form_gradients_equal_autograd(weights: dict[str, float]) -> None:
    results = {}
    for mode in ("autograd", "closed_form"):
        params = _params()
        anchor = _anchor(params)
        batch = _batch()
        # A gradient already there (as the data terms leave it) is added to, not replaced.
        for p in params:
            p.grad = torch.full_like(p, 0.25)
        objective = WeightedObjective({"ce": 1.0, **weights}, parameter_gradients=mode)
        total, values = objective(batch, params, anchor)
        total.backward()
        objective.add_parameter_gradients(params, anchor)
        results[mode] = (float(total.detach()), values, [p.grad.clone() for p in params], batch.logits.grad.clone())
    (total_a, values_a, grads_a, logit_grad_a), (total_c, values_c, grads_c, logit_grad_c) = results.values()
    assert total_c == total_a  # the reported loss value is the same number
    assert values_c.keys() == values_a.keys()
    for name in values_a:
        torch.testing.assert_close(values_c[name], values_a[name], rtol=0, atol=0)
    for grad_c, grad_a in zip(grads_c, grads_a, strict=True):
        # The total is summed in float32 (as in training), so autograd's float64 gradients carry float32 rounding.
        torch.testing.assert_close(grad_c, grad_a, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(logit_grad_c, logit_grad_a)
    # The closed form is not a no-op: the parameter gradients differ from the preset 0.25.
    assert any(not torch.equal(g, torch.full_like(g, 0.25)) for g in grads_c)


def test_closed_form_values_are_constants_and_missing_grads_are_created() -> None:
    params = _params()
    anchor = _anchor(params)
    objective = WeightedObjective({"l2zero": 1.0, "l1init": 1.0}, parameter_gradients="closed_form")
    total, _ = objective(_batch(), params, anchor)
    assert not total.requires_grad  # nothing for autograd: the terms' gradients come in closed form
    add_parameter_gradients(objective.weights, params, anchor, scale=2.0)
    n = sum(p.numel() for p in params)
    for p, theta0 in zip(params, anchor.reference, strict=True):
        expected = 2.0 * (2 * p.detach() / n + torch.sign(p.detach() - theta0) / n)
        torch.testing.assert_close(p.grad, expected)


def test_closed_form_refuses_init_terms_without_anchor_and_bad_modes() -> None:
    with pytest.raises(ValueError, match="anchor"):
        add_parameter_gradients({"l2init": 1.0}, _params(), None)
    with pytest.raises(ValueError, match="parameter_gradients must be 'autograd' or 'closed_form'"):
        WeightedObjective({"ce": 1.0}, parameter_gradients="numeric")


class AutogradObjective(WeightedObjective):
    """The objective with the parameter terms kept in the autograd graph (patched into autoft.train)."""

    def __init__(self, weights, dcm_sign="reference", parameter_gradients="autograd") -> None:
        super().__init__(weights, dcm_sign, parameter_gradients="autograd")


NINE = {name: (1.0 if name == "ce" else 0.3) for name in LOSS_NAMES}


def _trained(model: CLIPClassifier, run: Callable[[CLIPClassifier], None]) -> dict[str, torch.Tensor]:
    run(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(closed: dict[str, torch.Tensor], autograd: dict[str, torch.Tensor], bound: float) -> None:
    """Every weight equal to float32 rounding, except the attention KEY biases: softmax ignores a shift of
    all keys, so their data gradient is rounding noise and AdamW (g / sqrt(v)) turns noise into steps of up
    to lr. There both runs must stay within ``bound`` (lr x steps) of each other."""
    for key in closed:
        a, b = closed[key], autograd[key]
        if key.endswith("attn.in_proj_bias"):
            width = a.shape[0] // 3
            torch.testing.assert_close(a[width : 2 * width], b[width : 2 * width], rtol=0, atol=bound)
            a, b = torch.cat([a[:width], a[2 * width :]]), torch.cat([b[:width], b[2 * width :]])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")


def test_one_step_gradients_of_the_real_model_equal_autograd(tiny_classifier: CLIPClassifier) -> None:
    """The tiny CLIP, all nine terms, FLYP's text tower training: .grad after one backward, both ways."""
    torch.manual_seed(0)
    zeroshot = {k: v.detach().clone() for k, v in tiny_classifier.state_dict().items()}
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % tiny_classifier.num_classes
    grads = {}
    for mode in ("autograd", "closed_form"):
        tiny_classifier.load_state_dict(zeroshot)
        objective, params, anchor = train_module.prepare_objective(
            tiny_classifier, Hyperparams(NINE, 1e-3, 0.0), "reference", anchor_state=zeroshot
        )
        objective.closed_form = mode == "closed_form"
        generator = torch.Generator().manual_seed(3)
        tiny_classifier.zero_grad(set_to_none=True)
        with torch.no_grad():  # away from theta0, so the init terms have gradients
            for p in params:
                p.add_(1e-3 * torch.sign(torch.randn(p.shape, generator=generator)))
        step = train_module.ObjectiveStep(tiny_classifier, objective, params, anchor, CPU)
        total, _ = step.loss(images, labels, templates=torch.zeros(8, dtype=torch.long))
        step.backward(total)
        step.add_parameter_gradients()
        grads[mode] = [p.grad.clone() for p in params]
    for closed, autograd in zip(grads["closed_form"], grads["autograd"], strict=True):
        torch.testing.assert_close(closed, autograd, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("weights", [NINE, {"ce": 1.0, "l1zero": 5.0, "l2init": 2.0}], ids=["nine", "ce+norms"])
def test_inner_loop_takes_the_same_adamw_steps_as_autograd(
    tiny_classifier: CLIPClassifier,
    train_images: ArrayImages,
    eval_tf: Callable,
    monkeypatch: pytest.MonkeyPatch,
    weights: dict[str, float],
) -> None:
    torch.manual_seed(0)
    zeroshot = {k: v.detach().clone() for k, v in tiny_classifier.state_dict().items()}
    hparams = Hyperparams(weights=weights, lr=3e-3, weight_decay=0.1)

    def run(model: CLIPClassifier) -> None:
        stream = BatchStream(ImageBatches(train_images, eval_tf), 12, seed=0)
        inner_loop(model, zeroshot, hparams, stream, 4, device=CPU)

    closed = _trained(tiny_classifier, run)
    monkeypatch.setattr(train_module, "WeightedObjective", AutogradObjective)
    autograd = _trained(tiny_classifier, run)
    moved = [k for k in closed if not torch.equal(closed[k], zeroshot[k])]
    assert "head.weight" in moved and len(moved) > 10
    _assert_same_weights(closed, autograd, bound=4 * hparams.lr)


def test_final_run_with_accumulation_and_clipping_matches_autograd(
    tiny_classifier: CLIPClassifier,
    train_images: ArrayImages,
    eval_tf: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    zeroshot = {k: v.detach().clone() for k, v in tiny_classifier.state_dict().items()}
    hparams = Hyperparams(weights=NINE, lr=3e-3, weight_decay=0.1)
    # grad_clip small enough to bind: the parameter gradients must be in .grad before clipping.
    config = FinetuneConfig(epochs=1, batch_size=16, grad_accum=2, warmup_steps=1, grad_clip=0.05, seed=0)
    source = ImageBatches(train_images, eval_tf)

    def run(model: CLIPClassifier) -> None:
        model.load_state_dict(zeroshot)
        loop = FinetuneLoop(model, hparams, config, 3, device=CPU)
        loop.run_epoch(epoch_batches(source, 8, seed=0), 6)

    closed = _trained(tiny_classifier, run)
    monkeypatch.setattr(train_module, "WeightedObjective", AutogradObjective)
    autograd = _trained(tiny_classifier, run)
    assert not torch.equal(closed["head.weight"], zeroshot["head.weight"])
    _assert_same_weights(closed, autograd, bound=3 * hparams.lr)
