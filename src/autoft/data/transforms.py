"""Image transforms derived from the model's image spec (size, mean, std).

torchvision's v2 transforms accept both PIL images and uint8 tensors, so file-backed and in-memory
splits share one pipeline. Training uses open_clip's mild RandomResizedCrop (no flips: digits and
text-like images are not flip-invariant); evaluation is deterministic.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from autoft.models.factory import ImageSpec


def _finish(spec: ImageSpec) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(spec.mean), std=list(spec.std))]


def eval_transform(spec: ImageSpec) -> v2.Compose:
    return v2.Compose([v2.ToImage(), v2.Resize(spec.size, antialias=True), v2.CenterCrop(spec.size), *_finish(spec)])


def train_transform(spec: ImageSpec) -> v2.Compose:
    return v2.Compose([v2.ToImage(), v2.RandomResizedCrop(spec.size, scale=(0.9, 1.0), antialias=True), *_finish(spec)])
