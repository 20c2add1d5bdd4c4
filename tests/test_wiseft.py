"""WiSE-FT weight interpolation and the alpha sweep."""

from __future__ import annotations

import math

import pytest
import torch

from autoft.models.classifier import CLIPClassifier
from autoft.wiseft import interpolate, sweep


def _pair(model: CLIPClassifier) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    zeroshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    finetuned = {
        k: v + 0.1 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v.clone()
        for k, v in zeroshot.items()
    }
    return zeroshot, finetuned


def test_alpha_endpoints_are_exactly_the_two_models(tiny_classifier: CLIPClassifier) -> None:
    zeroshot, finetuned = _pair(tiny_classifier)
    at_zero = interpolate(zeroshot, finetuned, 0.0)
    at_one = interpolate(zeroshot, finetuned, 1.0)
    assert at_zero.keys() == zeroshot.keys()
    for key in zeroshot:
        assert torch.equal(at_zero[key], zeroshot[key]), key
        assert torch.equal(at_one[key], finetuned[key]), key
        assert at_zero[key].dtype == zeroshot[key].dtype


def test_half_is_the_midpoint_and_the_result_loads(tiny_classifier: CLIPClassifier) -> None:
    zeroshot, finetuned = _pair(tiny_classifier)
    mixed = interpolate(zeroshot, finetuned, 0.5)
    for key in zeroshot:
        torch.testing.assert_close(mixed[key], (zeroshot[key] + finetuned[key]) / 2, rtol=0, atol=1e-6)
    quarter = interpolate(zeroshot, finetuned, 0.25)["head.weight"]
    expected = 0.75 * zeroshot["head.weight"] + 0.25 * finetuned["head.weight"]
    torch.testing.assert_close(quarter, expected, rtol=0, atol=1e-5)
    tiny_classifier.load_state_dict(mixed, strict=True)
    assert torch.equal(tiny_classifier.head.weight.detach(), mixed["head.weight"])


def test_integer_buffers_are_kept_not_averaged() -> None:
    zeroshot = {"w": torch.zeros(3), "ids": torch.arange(4)}
    finetuned = {"w": torch.ones(3), "ids": torch.arange(4)}
    mixed = interpolate(zeroshot, finetuned, 0.3)
    assert mixed["ids"].dtype == torch.int64 and torch.equal(mixed["ids"], torch.arange(4))
    torch.testing.assert_close(mixed["w"], torch.full((3,), 0.3))


@pytest.mark.parametrize("alpha", [-0.1, 1.01, math.nan])
def test_alpha_outside_the_unit_interval_is_rejected(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha must lie in"):
        interpolate({"w": torch.zeros(2)}, {"w": torch.ones(2)}, alpha)


def test_mismatched_keys_or_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"different keys, e.g. \['extra'\]"):
        interpolate({"w": torch.zeros(2)}, {"w": torch.ones(2), "extra": torch.ones(1)}, 0.5)
    with pytest.raises(ValueError, match=r"w: shape \(2,\) vs \(3,\)"):
        interpolate({"w": torch.zeros(2)}, {"w": torch.ones(3)}, 0.5)


def test_sweep_picks_the_best_alpha_and_reports_every_value() -> None:
    zeroshot, finetuned = {"w": torch.zeros(4)}, {"w": torch.ones(4)}
    alphas = [round(0.1 * i, 1) for i in range(11)]
    # The score peaks where the interpolated weight is 0.3 (so at alpha 0.3).
    result = sweep(zeroshot, finetuned, alphas, lambda state: -abs(float(state["w"].mean()) - 0.3))
    assert result.best_alpha == 0.3
    assert result.alphas == alphas
    assert len(result.values) == 11
    assert result.value_at(0.3) == pytest.approx(0.0, abs=1e-6)
    assert result.value_at(0.5) == pytest.approx(-0.2, abs=1e-6)
    assert result.value_at(1.0) == pytest.approx(-0.7, abs=1e-6)


def test_sweep_ties_go_to_the_larger_alpha() -> None:
    zeroshot, finetuned = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    result = sweep(zeroshot, finetuned, [0.0, 0.2, 0.4, 0.6], lambda state: float(state["w"] <= 0.45))
    assert result.values == [1.0, 1.0, 1.0, 0.0]
    assert result.best_alpha == 0.4
