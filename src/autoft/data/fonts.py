"""Printed digits rendered from the TrueType fonts that ship inside matplotlib: the "web" half of pretraining.

Why: web-scale CLIP is robust because it saw the same concepts drawn in countless ways; the digits
benchmark's own images are one narrow kind (handwritten scans, bright ink on black). Typefaces give
the foundation model many other renderings of each digit (serif, sans, mono, italic, bold, old-style
figures) at no download cost, and they can never overlap the handwritten fine-tuning or test images.

The corpus is a deterministic function of its size and a seed: each image is one glyph of one font,
with a random faux-bold stroke, slant, rotation, aspect, size and position, drawn as bright ink on a
dark background at 32 px (the convention ``autoft.data.shifts`` expects; colours, polarity, textures
and degradations are added per view at pretraining time). A share of the renders is blurred through
a low-resolution round trip, as scanned or thumbnailed web images are.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 32
SUPERSAMPLE = 4  # geometry is done at 4x and box-filtered down: anti-aliased strokes like a real render
GLYPH_POINTS = 96
# Files under matplotlib/mpl-data/fonts/ttf whose code points '0'..'9' are digits (the STIX size and
# non-Unicode variants, cmex10, cmsy10 and LastResort map them to symbols or boxes). cmmi10 has old-style
# figures, which the web has too.
FONT_FILES: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
    "cmmi10.ttf",
)
# A family name as alt-text would give it ("a 7 in DejaVu Serif").
FONT_FAMILIES: dict[str, str] = {
    "DejaVuSans": "DejaVu Sans",
    "DejaVuSansMono": "DejaVu Sans Mono",
    "DejaVuSerif": "DejaVu Serif",
    "STIXGeneral": "STIX",
    "cmr10": "Computer Modern",
    "cmb10": "Computer Modern",
    "cmss10": "Computer Modern Sans",
    "cmtt10": "Computer Modern Typewriter",
    "cmti10": "Computer Modern",
    "cmmi10": "Computer Modern",
}


@dataclass(frozen=True)
class FontRenderSpec:
    """Ranges of the random rendering parameters (part of the pretraining recipe, hence its hash)."""

    height: tuple[float, float] = (0.55, 0.9)  # glyph height as a share of the frame
    aspect: tuple[float, float] = (0.75, 1.25)  # horizontal stretch
    rotate_degrees: float = 12.0
    shear: float = 0.25
    max_stroke: int = 3  # faux-bold outline width, in supersampled pixels (0 = the font's own weight)
    lowres_prob: float = 0.35  # share of renders that go through a low-resolution round trip
    lowres_sides: tuple[int, int] = (8, 16)


@dataclass
class FontCorpus:
    """Rendered printed digits: images [N, 32, 32, 3] uint8, labels [N], and each image's font family."""

    images: np.ndarray
    labels: np.ndarray
    families: list[str]


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def family_of(font_file: str) -> str:
    stem = Path(font_file).stem.split("-")[0]
    for prefix, family in FONT_FAMILIES.items():
        if stem.startswith(prefix) and (prefix != "DejaVuSans" or stem == "DejaVuSans"):
            return family
    return stem


@lru_cache(maxsize=512)
def _glyph(font_file: str, digit: int, stroke: int) -> Image.Image:
    """One digit of one font at high resolution, cropped to its ink (grey "L" image, ink bright)."""
    font = ImageFont.truetype(str(font_dir() / font_file), GLYPH_POINTS)
    side = 2 * GLYPH_POINTS
    canvas = Image.new("L", (side, side))
    ImageDraw.Draw(canvas).text(
        (side // 2, side // 2), str(digit), font=font, fill=255, anchor="mm", stroke_width=stroke, stroke_fill=255
    )
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f"{font_file} renders no ink for the digit {digit}")
    return canvas.crop(box)


def _render_one(font_file: str, digit: int, spec: FontRenderSpec, rng: np.random.Generator) -> np.ndarray:
    big = IMAGE_SIZE * SUPERSAMPLE
    glyph = _glyph(font_file, digit, int(rng.integers(0, spec.max_stroke + 1)) * 2)
    # Shear, then rotate (PIL's affine maps output to input coordinates, hence the minus sign).
    shear = float(rng.uniform(-spec.shear, spec.shear))
    width, height = glyph.size
    pad = int(abs(shear) * height / 2) + 1
    sheared = glyph.transform(
        (width + 2 * pad, height),
        Image.Transform.AFFINE,
        (1, shear, -pad - shear * height / 2, 0, 1, 0),
        resample=Image.Resampling.BILINEAR,
    )
    rotated = sheared.rotate(
        float(rng.uniform(-spec.rotate_degrees, spec.rotate_degrees)), resample=Image.Resampling.BILINEAR, expand=True
    )
    rotated = rotated.crop(rotated.getbbox() or (0, 0, 1, 1))
    target_h = float(rng.uniform(*spec.height)) * big
    scale = target_h / rotated.size[1]
    target_w = rotated.size[0] * scale * float(rng.uniform(*spec.aspect))
    new_w, new_h = max(1, min(big, round(target_w))), max(1, min(big, round(target_h)))
    resized = rotated.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (big, big))
    left = int(rng.integers(0, big - new_w + 1))
    top = int(rng.integers(0, big - new_h + 1))
    canvas.paste(resized, (left, top))
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    if rng.random() < spec.lowres_prob:
        side = int(rng.integers(spec.lowres_sides[0], spec.lowres_sides[1] + 1))
        small = small.resize((side, side), Image.Resampling.BOX).resize(
            (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC
        )
    gray = np.asarray(small, dtype=np.float32)
    peak = max(float(gray.max()), 1.0)
    return np.clip(np.rint(gray * (255.0 / peak)), 0, 255).astype(np.uint8)


def render_font_digits(
    count: int, seed: int, spec: FontRenderSpec | None = None, fonts: tuple[str, ...] = FONT_FILES
) -> FontCorpus:
    """``count`` printed digits, classes and fonts balanced by cycling, parameters drawn from ``seed``."""
    spec = spec or FontRenderSpec()
    rng = np.random.default_rng([seed, 0xF027])
    labels = np.arange(count) % 10
    font_index = rng.permutation(np.arange(count) % len(fonts))
    images = np.empty((count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i in range(count):
        images[i] = _render_one(fonts[font_index[i]], int(labels[i]), spec, rng)[..., None]
    return FontCorpus(images=images, labels=labels.astype(np.int64), families=[family_of(fonts[k]) for k in font_index])
