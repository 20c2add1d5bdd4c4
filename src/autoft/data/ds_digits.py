"""The built-in distribution-shift benchmark ``digits``: sklearn's 8x8 digits at 32 px, with shifts.

Why this dataset: it ships inside scikit-learn (no download), is small enough to pretrain a tiny CLIP
on two CPU cores in minutes, and drawn at 32 px it takes the same shift families as CIFAR-10-C does
(noise, blur, pixelation, contrast) plus "far" renderings of a digit (negative, bold or thin pen,
outlines, colours, textures, rotation) that fine-tuning on clean digits can forget.

The 1,797 images are split once, stratified by class, as a function of the seed:

* ``pretrain_pool``: the handwritten half of the foundation model's pretraining images
  (``autoft.models.pretrain``). It is ONE fixed set of rows for every seed and every option
  (``PRETRAIN_POOL_FRACTION`` of each class, drawn once from ``PRETRAIN_POOL_SEED``), because the
  foundation model is one fixed asset: whatever the run seed, no fine-tuning or test image is in it.
  The seed only shuffles the other rows into the parts below.
* ``id_train`` / ``id_val`` / ``id_test``: clean digits for fine-tuning, model selection and ID test.
* ``ood_val_source``: held-out images drawn in the ``ood_val_shifts`` families (none of them a test
  family; each image in one family per round, the family rotating per round, mixed severities) for
  AutoFT's search; its images are in no other split. Its size is counted in distinct source images.
* ``ood_val_holdout_source``: the ``id_val`` images drawn in the same families from an independent
  stream: a second draw of source images disjoint from the search's OOD-val, used only to re-score the
  search's best trials (the winner's curse, docs/method.md); nothing selects on it.
* one split per OOD test shift (named after the family), all drawn from the ``id_test`` images
  (the CIFAR-10-C / ImageNet-C convention), so no image used for fine-tuning is in any OOD set.

Every manifest carries ``source_indices``: for each example, its row in ``load_digits()``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from autoft.data.images import ArrayImages
from autoft.data.manifests import DatasetSplits, save_array_split
from autoft.data.options import DIGITS_SPLIT_PARTS, DigitsOptions
from autoft.data.shifts import SHIFTS, apply_shift
from autoft.errors import DataError

if TYPE_CHECKING:
    from autoft.config import AutoFTConfig

DATASET_NAME = "digits"
IMAGE_SIZE = 32
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = [
    "a photo of the digit {c}.",
    "a handwritten {c}.",
    "the number {c}.",
    "a drawing of the digit {c}.",
]
PRETRAIN_POOL_FRACTION = 0.4
# The fixed pool is the one seed 0 drew when the pool still followed the run seed, so seed 0's splits
# are unchanged by making it fixed.
PRETRAIN_POOL_SEED = 0
PRETRAIN_POOL_SPLIT = "pretrain_pool"
# Defaults (autoft.data.options.DigitsOptions): the search's OOD-val mixes four families that are none
# of the test families: `colorize` (appearance, a far shift plain fine-tuning erodes: measured -8 points
# after CE fine-tuning at lr 1e-3), `thin` (stroke), `gaussian_blur` (a near degradation) and `clutter`
# (occlusion). The tests mix near shifts that fine-tuning helps with far ones, of which "invert" is the
# one fine-tuning erodes most.
SPLIT_PARTS = DIGITS_SPLIT_PARTS


@lru_cache(maxsize=1)
def _rendered_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.empty((len(digits.images), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, small in enumerate(digits.images):
        # The source is 0..16 ink intensity; bicubic upsampling turns 8x8 blocks into smooth strokes.
        gray = Image.fromarray(np.rint(small * (255.0 / 16.0)).astype(np.uint8))
        images[i] = np.asarray(gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))[..., None]
    images.flags.writeable = False
    labels = digits.target.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as clean 32x32 RGB uint8 (bright ink on black) and their labels 0..9.

    Returned arrays are read-only views of a per-process cache; copy before modifying.
    """
    return _rendered_digits()


def _stream(seed: int, purpose: str) -> np.random.Generator:
    """An independent Generator per (seed, purpose): changing one split's recipe leaves the others alone."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


@lru_cache(maxsize=1)
def _pool_rows() -> np.ndarray:
    _, labels = load_digit_images()
    rng = _stream(PRETRAIN_POOL_SEED, "pretrain_pool")
    chosen = []
    for label in range(len(CLASS_NAMES)):
        members = rng.permutation(np.flatnonzero(labels == label))
        chosen.append(members[: round(len(members) * PRETRAIN_POOL_FRACTION)])
    rows = np.sort(np.concatenate(chosen))
    rows.flags.writeable = False
    return rows


def pretraining_pool_indices() -> np.ndarray:
    """Rows of ``load_digits()`` in the fixed pretraining pool (stratified, sorted; the same for every seed)."""
    return _pool_rows()


@dataclass
class DigitsPartition:
    """Disjoint rows of ``load_digits()`` for each part of the benchmark."""

    pretrain_pool: np.ndarray
    parts: dict[str, np.ndarray] = field(default_factory=dict)

    def all_parts(self) -> dict[str, np.ndarray]:
        return {PRETRAIN_POOL_SPLIT: self.pretrain_pool, **self.parts}


def partition(seed: int, fractions: dict[str, float]) -> DigitsPartition:
    """Split the images outside the (seed-independent) pretraining pool by ``fractions``, stratified by class."""
    _, labels = load_digit_images()
    pool = pretraining_pool_indices()
    rest = np.setdiff1d(np.arange(len(labels)), pool)
    rng = _stream(seed, "partition")
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_PARTS}
    cumulative = np.cumsum([fractions[name] for name in SPLIT_PARTS])
    for label in range(len(CLASS_NAMES)):
        members = rng.permutation(rest[labels[rest] == label])
        bounds = np.rint(cumulative * len(members)).astype(int)
        for name, start, stop in zip(SPLIT_PARTS, [0, *bounds[:-1]], bounds, strict=True):
            parts[name].append(members[start:stop])
    return DigitsPartition(pretrain_pool=pool, parts={k: np.sort(np.concatenate(v)) for k, v in parts.items()})


def _save(out_dir: Path, name: str, images: np.ndarray, rows: np.ndarray, **fields: Any) -> str:
    _, labels = load_digit_images()
    split = ArrayImages(images=np.ascontiguousarray(images), labels=labels[rows], class_names=list(CLASS_NAMES))
    save_array_split(out_dir, name, split, source_indices=rows.tolist(), **fields)
    return f"{name}.json"


def ood_val_copies(pool_size: int, min_size: int) -> int:
    """Shifted copies per held-out image so the OOD-val source has at least ``min_size`` examples."""
    if pool_size == 0:
        raise DataError("the OOD-val image pool is empty; raise data.options.fractions.ood_val")
    return max(1, -(-min_size // pool_size))


@dataclass
class ShiftedViews:
    """Shifted copies of some rows: the images and, per example, its source row, family and severity."""

    images: np.ndarray
    rows: np.ndarray
    families: list[str]
    severities: list[int]


def shifted_views(
    rows: np.ndarray, families: list[str], severities: list[int], rounds: int, seed: int, purpose: str
) -> ShiftedViews:
    """``rounds`` shifted copies of each row, each copy in one of ``families`` at one of ``severities``.

    Families are dealt round-robin within each class (every family sees every class about equally) and
    rotate by one per round, so an image's copies are in different families; severities cycle over the
    rows and rounds. Each family draws from its own stream (``purpose``/family): adding a family leaves
    the others' draws alone.
    """
    images, labels = load_digit_images()
    rank_in_class = np.empty(len(rows), dtype=np.int64)
    for label in np.unique(labels[rows]):
        members = np.flatnonzero(labels[rows] == label)
        rank_in_class[members] = np.arange(len(members))
    streams = {name: _stream(seed, f"{purpose}/{name}") for name in families}
    levels = np.asarray(severities)
    chunks, out_families, out_severities = [], [], []
    for round_index in range(rounds):
        family_of = (rank_in_class + round_index) % len(families)
        severity_of = levels[(np.arange(len(rows)) + round_index) % len(levels)]
        shifted = np.empty_like(images[rows])
        for f, name in enumerate(families):
            for severity in np.unique(severity_of[family_of == f]):
                members = (family_of == f) & (severity_of == severity)
                shifted[members] = apply_shift(images[rows[members]], name, int(severity), streams[name])
        chunks.append(shifted)
        out_families.extend(families[f] for f in family_of)
        out_severities.extend(severity_of.tolist())
    return ShiftedViews(np.concatenate(chunks), np.tile(rows, rounds), out_families, out_severities)


def build_digits(config: AutoFTConfig, out_dir: Path) -> DatasetSplits:
    """Write every digits split under ``out_dir`` and describe them (paths relative to ``out_dir``)."""
    options = config.data.options
    assert isinstance(options, DigitsOptions)  # the schema picks the options model by dataset
    out_dir = Path(out_dir)
    images, _ = load_digit_images()
    seed = config.seed
    split_rows = partition(seed, options.fractions)
    manifests: dict[str, str] = {}

    pool = split_rows.pretrain_pool
    manifests[PRETRAIN_POOL_SPLIT] = _save(out_dir, PRETRAIN_POOL_SPLIT, images[pool], pool, shift="none")
    for name, part in (("id_train", "id_train"), ("id_val", "id_val"), ("id_test", "test")):
        rows = split_rows.parts[part]
        manifests[name] = _save(out_dir, name, images[rows], rows, shift="none")

    # OOD-val source: rounds of shifted copies of each held-out image, one family per copy. Copies add
    # examples, not distinct images: the prepare step counts (and draws) OOD-val by source image.
    held_out = split_rows.parts["ood_val"]
    families = list(options.ood_val_shifts)
    rounds = ood_val_copies(len(held_out), options.ood_val_min_size)
    views = shifted_views(held_out, families, options.ood_val_severities, rounds, seed, "ood_val")
    manifests["ood_val_source"] = _save(
        out_dir,
        "ood_val_source",
        views.images,
        views.rows,
        shift="+".join(families),
        families=views.families,
        severities=views.severities,
        copies_per_image=rounds,
        distinct_images=len(held_out),
    )
    # The re-scoring draw: the id_val images in the same families (one round), from its own streams.
    id_val_rows = split_rows.parts["id_val"]
    holdout = shifted_views(id_val_rows, families, options.ood_val_severities, 1, seed, "ood_val_holdout")
    manifests["ood_val_holdout_source"] = _save(
        out_dir,
        "ood_val_holdout_source",
        holdout.images,
        holdout.rows,
        shift="+".join(families),
        families=holdout.families,
        severities=holdout.severities,
        copies_per_image=1,
        distinct_images=len(id_val_rows),
    )

    test_rows = split_rows.parts["test"]
    for shift in options.ood_test_shifts:
        shifted = apply_shift(images[test_rows], shift, options.test_severity, _stream(seed, f"ood_test/{shift}"))
        manifests[shift] = _save(
            out_dir, shift, shifted, test_rows, shift=shift, severities=[options.test_severity] * len(test_rows)
        )

    return DatasetSplits(
        dataset=DATASET_NAME,
        class_names=list(CLASS_NAMES),
        templates=list(TEMPLATES),
        manifests=manifests,
        # A name a reader of the report understands: the shift family and its severities.
        ood_val_set=f"{', '.join(families)} (severities {min(views.severities)}-{max(views.severities)})",
        ood_tests=list(options.ood_test_shifts),
        extra={
            "source": "sklearn.datasets.load_digits, 8x8 upsampled to 32x32 RGB",
            "seed": seed,
            "pretrain_pool": PRETRAIN_POOL_SPLIT,
            "pretrain_pool_fraction": PRETRAIN_POOL_FRACTION,
            "pretrain_pool_seed": PRETRAIN_POOL_SEED,
            "ood_val_shifts": families,
            "ood_val_severities": options.ood_val_severities,
            "ood_val_source_distinct": len(held_out),
            "ood_val_source_examples": len(views.rows),
            "ood_test_severity": options.test_severity,
            "shift_kinds": {s: SHIFTS[s].kind for s in (*families, *options.ood_test_shifts)},
        },
    )
