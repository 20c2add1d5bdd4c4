"""Fabricators: tiny on-disk copies of real dataset layouts (WILDS, ImageNet family, CIFAR family).

Each writes the same folder and file structure as the real release, with a few small images, into a
folder the test owns, so builders are exercised exactly as on real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: int = 8, fmt: str | None = None) -> Path:
    """A small random RGB image (the colour is a function of ``seed``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path
