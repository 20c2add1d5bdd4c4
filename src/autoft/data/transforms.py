"""Image transforms derived from the model's image spec (size, mean, std), split in two halves.

Why two halves: per-sample transforms cost ~0.2-0.6 ms an image in the host (torchvision v2's
per-call overhead), more than a training step of a small model. So each transform is

* ``base(image)``: per image, once: decode to a uint8 CHW tensor at a storable size. An in-memory
  array split whose short side is at most the model's size stays as it is; anything else (files,
  large arrays) is resized (short side, antialiased) and centre-cropped to ``size x size``, the
  evaluation geometry. Bases are what the in-memory cache holds and what DataLoader workers produce.
* ``finish(bases, crops)``: per batch, on the device: the training crop (RandomResizedCrop, scale
  (0.9, 1.0), no flips: digits and text-like images are not flip-invariant) or the evaluation
  geometry, then scaling to [0, 1] and normalisation.

Evaluation through ``base`` + ``finish`` equals torchvision's per-sample ``Resize`` + ``CenterCrop``
+ ``ToDtype`` + ``Normalize`` exactly (the same kernels, on a batch). Training crops are drawn from a
``torch.Generator`` the caller owns (so batches stay a function of the seed, across resumes and
ranks) and applied with bilinear sampling in float, where torchvision would round the resized crop
to uint8 first. For files and large arrays the crop is taken from the evaluation square, not the
full image: the same augmentation family, on the field of view that evaluation sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from autoft.models.factory import ImageSpec

CROP_SCALE = (0.9, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its centre-crop fallback


def to_chw_uint8(image: Any) -> torch.Tensor:
    """A PIL image or a uint8 HWC array as a uint8 CHW tensor (a view for arrays)."""
    if isinstance(image, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        return image
    return TF.pil_to_tensor(image)


@dataclass(frozen=True)
class ImageTransform:
    """The model's input pipeline for one purpose: ``augment`` for training, else evaluation."""

    spec: ImageSpec
    augment: bool = False

    @property
    def size(self) -> int:
        return self.spec.size

    def keeps_native(self, height: int, width: int) -> bool:
        """Whether an in-memory image of this size is stored as it is (it fits inside the model's square)."""
        return min(height, width) <= self.size

    def base(self, image: Any, native: bool = False) -> torch.Tensor:
        """uint8 [3, h, w]: the image as is (``native``) or in the evaluation geometry at ``size``."""
        tensor = to_chw_uint8(image)
        if native:
            return tensor
        return TF.center_crop(TF.resize(tensor, self.size, antialias=True), [self.size, self.size])

    def draw_crops(self, count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor | None:
        """[count, 4] crop boxes (top, left, h, w) for bases of ``height x width``; None for evaluation."""
        if not self.augment:
            return None
        return random_resized_crop_boxes(count, height, width, generator)

    def finish(self, bases: torch.Tensor, crops: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 [B, 3, h, w] on the device -> normalised float [B, 3, size, size]."""
        if self.augment:
            if crops is None:
                raise ValueError("the training transform needs crop boxes (draw_crops) for each image")
            images = resized_crops(TF.to_dtype(bases, torch.float32, scale=True), crops, self.size)
        else:
            if bases.shape[-2:] != (self.size, self.size):
                bases = TF.center_crop(TF.resize(bases, self.size, antialias=True), [self.size, self.size])
            images = TF.to_dtype(bases, torch.float32, scale=True)
        return TF.normalize(images, mean=list(self.spec.mean), std=list(self.spec.std))

    def __call__(self, image: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """One image, whole pipeline: float [3, size, size] (crops from ``generator`` or the global RNG)."""
        base = to_chw_uint8(image)
        crops = self.draw_crops(1, *base.shape[-2:], generator or torch.default_generator)
        return self.finish(base[None], crops)[0]


def eval_transform(spec: ImageSpec) -> ImageTransform:
    return ImageTransform(spec, augment=False)


def train_transform(spec: ImageSpec) -> ImageTransform:
    return ImageTransform(spec, augment=True)


def torchvision_eval_transform(spec: ImageSpec) -> v2.Compose:
    """The per-sample torchvision pipeline that ``eval_transform`` reproduces batch-wise (the reference)."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(spec.size, antialias=True),
            v2.CenterCrop(spec.size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(spec.mean), std=list(spec.std)),
        ]
    )


def random_resized_crop_boxes(
    count: int,
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop.get_params``, vectorised over ``count`` images.

    Each image tries ``CROP_ATTEMPTS`` (area, aspect) draws and takes the first box that fits, else the
    centre crop at the nearest allowed aspect. Returns int64 [count, 4]: top, left, h, w.
    """
    area = height * width
    target = area * torch.empty(count, CROP_ATTEMPTS).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(torch.empty(count, CROP_ATTEMPTS).uniform_(log_ratio[0], log_ratio[1], generator=generator))
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(dim=1), fits.long().argmax(dim=1), -1)
    picked = first.clamp(min=0)[:, None]
    w, h = w.gather(1, picked)[:, 0], h.gather(1, picked)[:, 0]
    # The fallback: centre crop, clamped to the allowed aspect range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback = (round(width / ratio[0]), width)
    elif in_ratio > ratio[1]:
        fallback = (height, round(height * ratio[1]))
    else:
        fallback = (height, width)
    none_fit = first < 0
    h = torch.where(none_fit, fallback[0], h)
    w = torch.where(none_fit, fallback[1], w)
    offsets = torch.rand(count, 2, generator=generator)
    top = torch.floor(offsets[:, 0] * (height - h + 1)).long()
    left = torch.floor(offsets[:, 1] * (width - w + 1)).long()
    top = torch.where(none_fit, (height - h) // 2, top)
    left = torch.where(none_fit, (width - w) // 2, left)
    return torch.stack([top, left, h, w], dim=1)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each float image to its box and resize it to ``size`` (bilinear), in one batched call.

    Output pixel ``j`` samples the image at ``left + (j + 0.5) * w / size - 0.5``, clamped to the box's
    edge pixels: what ``F.interpolate(crop, mode="bilinear", align_corners=False)`` does on the cropped
    image, so a crop here equals torchvision's float ``resized_crop`` (antialiasing only matters when
    shrinking, and a crop of 90-100 % of a base no larger than ``size`` is never shrunk).
    """
    _, _, height, width = images.shape
    boxes = boxes.to(device=images.device, dtype=torch.float32)
    steps = (torch.arange(size, device=images.device, dtype=torch.float32) + 0.5) / size

    def axis(start: torch.Tensor, extent: torch.Tensor, full: int) -> torch.Tensor:
        position = start[:, None] + steps[None, :] * extent[:, None] - 0.5
        position = torch.minimum(torch.maximum(position, start[:, None]), (start + extent - 1)[:, None])
        return (2 * position + 1) / full - 1  # pixel index -> grid_sample's [-1, 1] (align_corners=False)

    top, left, h, w = boxes.unbind(dim=1)
    ys, xs = axis(top, h, height), axis(left, w, width)
    grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
