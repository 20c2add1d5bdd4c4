"""Labeled image collections: what a split holds once its manifest is loaded.

A collection has ``len``, ``image(i)`` (a PIL image or a uint8 HWC array), ``labels``, ``groups`` and
its class names. Large data stays where it is: file-backed collections decode on demand, and
:mod:`autoft.data.loaders` turns any of them into batches (decoded once into memory when they fit).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from autoft.errors import DataError

NO_GROUP = -1


class LabeledImages(ABC):
    """Base class: ``len``, ``image(i)`` (PIL image or uint8 HWC array), ``labels``, ``groups``."""

    class_names: list[str]
    labels: np.ndarray
    groups: np.ndarray
    group_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def image(self, index: int) -> Image.Image | np.ndarray:
        """The decoded image at ``index``."""

    def native_shape(self) -> tuple[int, int] | None:
        """(height, width) shared by every image, when known without decoding one; None when sizes may vary.

        Batching keeps such images at their own size when they are no larger than the model's input
        (CIFAR, digits), instead of storing them resized.
        """
        return None

    def subset(self, indices: Sequence[int]) -> LabeledImages:
        return SubsetImages(self, np.asarray(indices, dtype=np.int64))

    def _check(self) -> None:
        if len(self.labels) == 0:
            raise DataError("empty split: no examples")
        if self.labels.min() < 0 or self.labels.max() >= len(self.class_names):
            raise DataError(
                f"labels out of range [0, {len(self.class_names)}): min {self.labels.min()}, max {self.labels.max()}"
            )
        if len(self.groups) != len(self.labels):
            raise DataError(f"{len(self.groups)} group ids for {len(self.labels)} labels")


@dataclass
class ArrayImages(LabeledImages):
    """Images held in memory as a uint8 array [N, H, W, 3] (small benchmarks, CIFAR)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    groups: np.ndarray = field(default=None)  # type: ignore[assignment]
    group_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.groups is None:
            self.groups = np.full(len(self.labels), NO_GROUP, dtype=np.int64)
        self.groups = np.asarray(self.groups, dtype=np.int64)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise DataError(f"images must be uint8 [N, H, W, 3], got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        self._check()

    def image(self, index: int) -> np.ndarray:
        return self.images[index]

    def native_shape(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])


@dataclass
class FileImages(LabeledImages):
    """Images read from files on demand (image folders, CSV manifests, ImageNet-style trees)."""

    paths: list[str]
    labels: np.ndarray
    class_names: list[str]
    groups: np.ndarray = field(default=None)  # type: ignore[assignment]
    group_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.groups is None:
            self.groups = np.full(len(self.labels), NO_GROUP, dtype=np.int64)
        self.groups = np.asarray(self.groups, dtype=np.int64)
        if len(self.paths) != len(self.labels):
            raise DataError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        self._check()

    def image(self, index: int) -> Image.Image:
        path = self.paths[index]
        try:
            with _bombs_are_errors(), Image.open(path) as img:
                return to_rgb(img)
        except UNREADABLE as error:
            raise DataError(f"cannot read image {path}: {_reason(error)}") from None


# Background that transparent pixels are composited onto (their own colour values are arbitrary, often black).
ALPHA_BACKGROUND = (255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(img: Image.Image) -> Image.Image:
    """An 8-bit RGB image from any mode PIL decodes, with the pixel range kept.

    PIL's own ``convert("RGB")`` clips 16-bit grey (``I;16``, ``I``) at 255, turning almost every pixel
    white, and drops alpha, leaving whatever colour transparent pixels happen to hold; here 16-bit values
    are scaled to 8 bits and transparency is composited onto white. Float images (``F``) have no agreed
    range and are refused.
    """
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f"32-bit integer pixels outside 0..65535 (mode {mode}); save the image as 8 or 16 bit")
        scale = 1 if mode == "I" and (not values.size or values.max() <= 255) else 257
        grey = np.rint(values / scale).clip(0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        raise ValueError("32-bit float pixels (mode F) have no agreed range; save the image as 8 or 16 bit")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # RGB (a loaded copy), L, 1, P, CMYK, YCbCr: PIL's conversions are exact there


# Decoding fails with OSError (missing, truncated, not an image), ValueError, SyntaxError (malformed PNG
# chunks) or PIL's DecompressionBombError; a size over the limit only warns unless turned into an error.
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)
MAX_PIXELS_ENV = "AUTOFT_MAX_IMAGE_PIXELS"
# PIL's own default (about 89 megapixels). Set explicitly each time: wilds' FMoW module raises the
# process-wide limit to 10 gigapixels when it is imported.
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3


def max_image_pixels() -> int:
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    try:
        return int(raw) if raw else DEFAULT_MAX_PIXELS
    except ValueError:
        raise DataError(f"{MAX_PIXELS_ENV}={raw!r} is not a whole number of pixels") from None


@contextmanager
def _bombs_are_errors() -> Iterator[None]:
    """An image larger than the pixel limit ($AUTOFT_MAX_IMAGE_PIXELS, else PIL's default) is an error."""
    previous = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = max_image_pixels()
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _reason(error: BaseException) -> str:
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"more pixels than the limit of {Image.MAX_IMAGE_PIXELS}: a decompression bomb? raise {MAX_PIXELS_ENV}"
    return str(error) or type(error).__name__


def _file_paths(images: LabeledImages) -> list[str] | None:
    """The files a split reads (through any subsets), or None for a split held in memory."""
    positions = np.arange(len(images))
    while isinstance(images, SubsetImages):
        positions = images.indices[positions]
        images = images.parent
    return [images.paths[i] for i in positions] if isinstance(images, FileImages) else None


def array_rows(images: LabeledImages) -> np.ndarray | None:
    """A split held in a uint8 array (through any subsets) as one gathered [N, H, W, 3] array, else None."""
    positions = np.arange(len(images))
    while isinstance(images, SubsetImages):
        positions = images.indices[positions]
        images = images.parent
    return images.images[positions] if isinstance(images, ArrayImages) else None


def check_readable(images: LabeledImages, what: str, limit: int = 3) -> None:
    """Before any compute: every image of a file-backed split opens (header read, data verified without
    decoding the pixels), or one error gives the count of broken ones and the first few paths."""
    paths = _file_paths(images)
    problems: list[str] = []
    count = 0
    for path in paths or []:
        try:
            with _bombs_are_errors(), Image.open(path) as img:
                if img.mode == "F":
                    raise ValueError("32-bit float pixels (mode F) have no agreed range")
                img.verify()
        except UNREADABLE as error:
            count += 1
            if len(problems) < limit:
                problems.append(f"{path} ({_reason(error)})")
    if count:
        raise DataError(
            f"{what}: {count} of {len(images)} images cannot be read, e.g. {'; '.join(problems)}. Fix or remove "
            "them; nothing was evaluated"
        )


class SubsetImages(LabeledImages):
    def __init__(self, parent: LabeledImages, indices: np.ndarray) -> None:
        if len(indices) and (indices.min() < 0 or indices.max() >= len(parent)):
            raise DataError(f"subset indices out of range for a split of {len(parent)} examples")
        self.parent = parent
        self.indices = indices
        self.class_names = parent.class_names
        self.group_names = parent.group_names
        self.labels = parent.labels[indices]
        self.groups = parent.groups[indices]

    def image(self, index: int) -> Image.Image | np.ndarray:
        return self.parent.image(int(self.indices[index]))

    def native_shape(self) -> tuple[int, int] | None:
        return self.parent.native_shape()


def indices_hash(indices: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]
