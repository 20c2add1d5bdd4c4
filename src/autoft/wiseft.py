"""WiSE-FT: weight-space interpolation between the zero-shot and the fine-tuned model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


def interpolate(
    zeroshot: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """theta_alpha = (1 - alpha) * theta_zeroshot + alpha * theta_finetuned (floating tensors)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if zeroshot.keys() != finetuned.keys():
        missing = sorted(set(zeroshot) ^ set(finetuned))[:5]
        raise ValueError(f"zero-shot and fine-tuned weights have different keys, e.g. {missing}")
    mixed = {}
    for key, zs in zeroshot.items():
        ft = finetuned[key]
        if zs.shape != ft.shape:
            raise ValueError(f"{key}: shape {tuple(zs.shape)} vs {tuple(ft.shape)}")
        # Integer buffers (e.g. position ids) cannot be averaged; they are equal in both anyway.
        mixed[key] = torch.lerp(zs.float(), ft.float(), alpha).to(ft.dtype) if ft.is_floating_point() else ft
    return mixed


@dataclass
class WiseFTSweep:
    alphas: list[float]
    values: list[float]  # the score of each alpha on the split alpha is chosen on
    best_alpha: float

    def value_at(self, alpha: float) -> float:
        return self.values[self.alphas.index(alpha)]


def sweep(
    zeroshot: dict[str, torch.Tensor],
    finetuned: dict[str, torch.Tensor],
    alphas: Sequence[float],
    score: Callable[[dict[str, torch.Tensor]], float],
) -> WiseFTSweep:
    """Score every alpha (on OOD-val or ID-val, per wiseft.select_on); the best alpha (ties: the larger) is kept."""
    values = [score(interpolate(zeroshot, finetuned, alpha)) for alpha in alphas]
    best = max(range(len(alphas)), key=lambda i: (values[i], alphas[i]))
    return WiseFTSweep(alphas=list(alphas), values=values, best_alpha=alphas[best])
