"""Image distribution shifts for small RGB images, deterministic from a numpy Generator.

Why our own and not ``imagecorruptions``: that package draws from numpy's GLOBAL random state (not
reproducible from a Generator), calls scikit-image with the removed ``multichannel`` argument, pulls in
OpenCV, and its severity constants are tuned for 224 px photos (a blur of sigma 6 erases a 32 px digit).

Each family maps a severity 1..5 to one stated parameter (``ShiftFamily.levels``), and its severities
are ordered: a higher severity moves the image further from the original (tests check this). Families
are "near" (low-level degradations that keep the rendering: noise, blur, pixelation, contrast, JPEG)
or "far" (they change how a digit is drawn: polarity, stroke thickness, outlines, colours, textured
backgrounds, rotation, scale, clutter). Fine-tuning on clean digits tends to erode robustness to the
far ones, which is what AutoFT's learned objective is meant to keep.

Functions take uint8 arrays ``[H, W, 3]`` or batches ``[N, H, W, 3]`` and return the same shape and
dtype; every image of a batch draws its own random parameters from the one Generator, so a result
depends only on the input and the Generator's state. Stroke families (``thick``, ``thin``,
``outline``, ``rotate``, ``shrink``, ``clutter``) assume the clean rendering: bright ink on a dark
background; compose them before the appearance families when chaining shifts.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

NUM_SEVERITIES = 5
ShiftFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


class ShiftError(ValueError):
    """An unknown shift family, a severity out of range or an image of the wrong shape."""


@dataclass(frozen=True)
class ShiftFamily:
    """A named shift with the parameter value used at each severity 1..5."""

    name: str
    kind: Literal["near", "far"]
    description: str
    parameter: str  # what ``levels`` measure, for reports and docs
    levels: tuple[float, ...]
    fn: ShiftFn

    def level(self, severity: int) -> float:
        if not isinstance(severity, (int, np.integer)) or not 1 <= severity <= len(self.levels):
            raise ShiftError(f"{self.name}: severity must be an integer in 1..{len(self.levels)}, got {severity!r}")
        return self.levels[int(severity) - 1]


# ----------------------------------------------------------------------------------------------
# Helpers. Images are processed as float32 [N, H, W, 3] in 0..255 and clipped back to uint8 once.
# ----------------------------------------------------------------------------------------------


def _as_batch(images: np.ndarray) -> tuple[np.ndarray, bool]:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ShiftError(f"shifts take uint8 images, got {images.dtype}")
    if images.ndim == 3 and images.shape[-1] == 3:
        return images[None].astype(np.float32), True
    if images.ndim == 4 and images.shape[-1] == 3:
        return images.astype(np.float32), False
    raise ShiftError(f"shifts take [H, W, 3] or [N, H, W, 3] images, got shape {images.shape}")


def _ndimage() -> Any:
    # scipy.ndimage takes 0.4 s to import; the config schema reads this module's table of names.
    from scipy import ndimage

    return ndimage


def _to_uint8(batch: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(batch), 0, 255).astype(np.uint8)


def _disk(radius: float) -> np.ndarray:
    """A disk footprint for grey morphology, as a [1, k, k, 1] array (batch and channels untouched)."""
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx**2 + yy**2 <= radius**2 + 1e-6)[None, :, :, None]


def _luminance(batch: np.ndarray) -> np.ndarray:
    return batch @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _random_colors(rng: np.random.Generator, n: int) -> np.ndarray:
    """Saturated random RGB colours [n, 3] in 0..1 (random hue, saturation 0.5..1)."""
    hue = rng.uniform(0, 1, n)
    sat = rng.uniform(0.5, 1.0, n)
    # HSV -> RGB with value 1, vectorised.
    k = (np.array([5.0, 3.0, 1.0]) + hue[:, None] * 6) % 6
    return 1 - sat[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def _per_image(batch: np.ndarray, fn: Callable[[Image.Image, int], Image.Image]) -> np.ndarray:
    """Apply a PIL operation image by image (cheap at 32 px; PIL has no batch API)."""
    out = np.empty_like(batch)
    for i, image in enumerate(_to_uint8(batch)):
        out[i] = np.asarray(fn(Image.fromarray(image), i), dtype=np.float32)
    return out


# ----------------------------------------------------------------------------------------------
# Near shifts: degradations of the same rendering.
# ----------------------------------------------------------------------------------------------


def gaussian_noise(batch: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return batch + rng.normal(0.0, sigma, batch.shape).astype(np.float32)


def gaussian_blur(batch: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    del rng  # deterministic
    return _ndimage().gaussian_filter(batch, sigma=(0, sigma, sigma, 0), mode="nearest")


def pixelate(batch: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    """Average down to ``size`` x ``size`` pixels, then blow back up with nearest neighbour."""
    del rng
    height, width = batch.shape[1:3]
    small = (int(size), int(size))
    return _per_image(
        batch, lambda img, _: img.resize(small, Image.Resampling.BOX).resize((width, height), Image.Resampling.NEAREST)
    )


def contrast(batch: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Pull every pixel toward the image's mean: ``factor`` of the original contrast remains."""
    del rng
    mean = batch.mean(axis=(1, 2, 3), keepdims=True)
    return mean + (batch - mean) * factor


def jpeg(batch: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    del rng

    def compress(img: Image.Image, _: int) -> Image.Image:
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=int(quality))
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")

    return _per_image(batch, compress)


# ----------------------------------------------------------------------------------------------
# Far shifts: the digit is drawn differently.
# ----------------------------------------------------------------------------------------------


def invert(batch: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Blend toward the photographic negative; 1.0 is dark ink on a white background."""
    del rng
    return (1 - amount) * batch + amount * (255.0 - batch)


def thick(batch: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Thicker strokes: grey dilation with a disk of ``radius`` pixels."""
    del rng
    return _ndimage().grey_dilation(batch, footprint=_disk(radius), mode="constant", cval=0.0)


def thin(batch: np.ndarray, width: float, rng: np.random.Generator) -> np.ndarray:
    """Thinner strokes: erode ``width`` pixels from each side of every stroke.

    Strokes are only 4-8 px wide at 32 px, so whole-pixel erosion steps are too coarse: a fractional
    width interpolates between the two neighbouring integer erosions. Each image's peak brightness is
    then restored so that thin ink is as bright as before.
    """
    del rng
    whole, fraction = int(np.floor(width)), float(width - np.floor(width))
    lower = _ndimage().grey_erosion(batch, footprint=_disk(whole), mode="nearest") if whole else batch
    upper = _ndimage().grey_erosion(batch, footprint=_disk(whole + 1), mode="nearest")
    eroded = (1 - fraction) * lower + fraction * upper
    peak = batch.max(axis=(1, 2, 3), keepdims=True)
    eroded_peak = np.maximum(eroded.max(axis=(1, 2, 3), keepdims=True), 1.0)
    return eroded * (peak / eroded_peak)


def outline(batch: np.ndarray, hollowness: float, rng: np.random.Generator) -> np.ndarray:
    """Outline rendering: the morphological gradient (a ring around each stroke) replaces the fill.

    ``hollowness`` is the share of the fill replaced: 1.0 leaves only the outline.
    """
    del rng
    ring = _ndimage().grey_dilation(batch, footprint=_disk(1.0)) - _ndimage().grey_erosion(batch, footprint=_disk(1.0))
    ring = np.clip(ring * 1.5, 0, 255)  # the ring is weaker than the ink it came from
    return (1 - hollowness) * batch + hollowness * ring


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One random texture in 0..1: smooth blobs, stripes at a random angle, or a checkerboard."""
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 0:
        blobs = _ndimage().gaussian_filter(rng.normal(size=(height, width)), sigma=rng.uniform(1.5, 3.5))
        return (blobs - blobs.min()) / max(float(np.ptp(blobs)), 1e-6)
    if kind == 1:
        angle, period = rng.uniform(0, np.pi), rng.uniform(3, 8)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period
        return 0.5 + 0.5 * np.sin(phase + rng.uniform(0, 2 * np.pi))
    cell = int(rng.integers(3, 7))
    return ((((yy + rng.integers(cell)) // cell) + ((xx + rng.integers(cell)) // cell)) % 2).astype(np.float32)


def textured_background(batch: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """White ink over a random two-colour texture whose brightness reaches ``amplitude`` of white.

    Ink coverage is taken from luminance, so brighter backgrounds leave less contrast to the ink.
    """
    n, height, width, _ = batch.shape
    ink = _luminance(batch)[..., None] / 255.0
    out = np.empty_like(batch)
    first, second = _random_colors(rng, n), _random_colors(rng, n)
    for i in range(n):
        texture = _texture(rng, height, width)[..., None]
        background = (1 - texture) * first[i] + texture * second[i]
        out[i] = 255.0 * (ink[i] + (1 - ink[i]) * amplitude * background)
    return out


def colorize(batch: np.ndarray, gap: float, rng: np.random.Generator) -> np.ndarray:
    """Random-coloured ink on a random-coloured background, ``gap`` apart in luminance (0..1).

    The ink stays the brighter of the two, so this is not an inversion; chroma still separates them.
    """
    n = batch.shape[0]
    ink_alpha = _luminance(batch)[..., None] / 255.0
    ink_color, bg_color = _random_colors(rng, n), _random_colors(rng, n)
    weights = np.array([0.299, 0.587, 0.114])
    # Place both colours at chosen luminances: scale each hue to the target brightness.
    bg_lum = rng.uniform(0.0, 1.0 - gap, n)
    ink_lum = bg_lum + gap
    bg = bg_color * (bg_lum / np.maximum(bg_color @ weights, 1e-6))[:, None]
    ink = ink_color * (ink_lum / np.maximum(ink_color @ weights, 1e-6))[:, None]
    # A scaled colour can exceed 1 in one channel; shift the excess into the others (keeps luminance).
    bg, ink = (np.clip(c + (c.max(axis=1, keepdims=True) - 1).clip(0), 0, 1) for c in (bg, ink))
    bg, ink = bg[:, None, None, :], ink[:, None, None, :]
    return 255.0 * (bg + ink_alpha * (ink - bg))


def rotate(batch: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate each image by +-``degrees`` (random sign) about its centre; corners fill with black."""
    signs = rng.choice([-1.0, 1.0], size=batch.shape[0])
    return _per_image(batch, lambda img, i: img.rotate(float(signs[i] * degrees), resample=Image.Resampling.BILINEAR))


def shrink(batch: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Scale the digit down by ``scale`` and place it at a random position in the frame."""
    height, width = batch.shape[1:3]
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    tops = rng.integers(0, height - new_h + 1, size=batch.shape[0])
    lefts = rng.integers(0, width - new_w + 1, size=batch.shape[0])

    def place(img: Image.Image, i: int) -> Image.Image:
        canvas = Image.new("RGB", (width, height))
        canvas.paste(img.resize((new_w, new_h), Image.Resampling.BILINEAR), (int(lefts[i]), int(tops[i])))
        return canvas

    return _per_image(batch, place)


def clutter(batch: np.ndarray, lines: float, rng: np.random.Generator) -> np.ndarray:
    """Draw ``lines`` random ink-bright line segments across the image (stroke-like occlusion)."""
    height, width = batch.shape[1:3]
    count = int(lines)
    ends = rng.uniform(0, [width, height, width, height], size=(batch.shape[0], count, 4))
    widths = rng.integers(1, 3, size=(batch.shape[0], count))

    def draw(img: Image.Image, i: int) -> Image.Image:
        mask = Image.new("L", (width, height))
        pen = ImageDraw.Draw(mask)
        for segment, line_width in zip(ends[i], widths[i], strict=True):
            pen.line([float(v) for v in segment], fill=255, width=int(line_width))
        return Image.fromarray(np.maximum(np.asarray(img), np.asarray(mask)[..., None]))

    return _per_image(batch, draw)


# One row per family: the parameter each severity 1..5 sets. Levels were chosen by eye at 32 px so
# that severity 5 is hard but still legible to a person. fmt: off keeps the table a table.
# fmt: off
_TABLE: tuple[tuple[str, str, str, str, tuple[float, ...], ShiftFn], ...] = (
    ("gaussian_noise", "near", "additive Gaussian pixel noise", "std on 0..255",
     (12, 24, 36, 50, 66), gaussian_noise),
    ("gaussian_blur", "near", "Gaussian blur", "sigma in pixels",
     (0.8, 1.2, 1.6, 2.0, 2.5), gaussian_blur),
    ("pixelate", "near", "box-downsample then nearest-upsample", "pixels per side",
     (14, 11, 9, 7, 6), pixelate),
    ("contrast", "near", "contrast reduced toward the mean", "share of contrast kept",
     (0.55, 0.42, 0.32, 0.24, 0.18), contrast),
    ("jpeg", "near", "JPEG compression", "quality",
     (30, 18, 12, 8, 5), jpeg),
    ("invert", "far", "blend toward the negative (dark ink on white)", "blend weight",
     (0.76, 0.82, 0.88, 0.94, 1.0), invert),
    ("thick", "far", "thicker strokes (grey dilation)", "disk radius in pixels",
     (1.0, 1.5, 2.0, 2.5, 3.0), thick),
    ("thin", "far", "thinner strokes (sub-pixel grey erosion)", "pixels removed per side",
     (0.5, 0.75, 1.0, 1.25, 1.5), thin),
    ("outline", "far", "outline rendering (morphological gradient)", "share of fill removed",
     (0.6, 0.7, 0.8, 0.9, 1.0), outline),
    ("textured_background", "far", "white ink over random coloured textures", "background brightness",
     (0.35, 0.5, 0.6, 0.7, 0.8), textured_background),
    ("colorize", "far", "random ink and background colours", "luminance gap (0..1)",
     (0.6, 0.5, 0.4, 0.3, 0.22), colorize),
    ("rotate", "far", "rotation by a random sign", "degrees",
     (15, 25, 35, 45, 60), rotate),
    ("shrink", "far", "digit scaled down at a random position", "scale",
     (0.8, 0.7, 0.6, 0.5, 0.42), shrink),
    ("clutter", "far", "random stroke-like line segments", "number of lines",
     (1, 2, 3, 4, 6), clutter),
)
# fmt: on
SHIFTS: dict[str, ShiftFamily] = {row[0]: ShiftFamily(*row) for row in _TABLE}  # type: ignore[arg-type]
NEAR_SHIFTS = tuple(name for name, family in SHIFTS.items() if family.kind == "near")
FAR_SHIFTS = tuple(name for name, family in SHIFTS.items() if family.kind == "far")


def get_shift(name: str) -> ShiftFamily:
    if name not in SHIFTS:
        raise ShiftError(f"unknown shift family {name!r}; known: near {list(NEAR_SHIFTS)}, far {list(FAR_SHIFTS)}")
    return SHIFTS[name]


def apply_shift(images: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Apply shift family ``name`` at ``severity`` (1..5) to one image or a batch (uint8 RGB)."""
    family = get_shift(name)
    return apply_level(images, name, family.level(severity), rng)


def apply_level(images: np.ndarray, name: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """Apply a family at a raw parameter value (pretraining samples between the stated severities)."""
    family = get_shift(name)
    batch, single = _as_batch(images)
    out = _to_uint8(family.fn(batch, level, rng))
    return out[0] if single else out
