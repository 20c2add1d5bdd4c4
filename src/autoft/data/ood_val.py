"""The search's OOD-val subset and its held-out re-scoring set, drawn by distinct source image.

The prepare step writes two manifests from a dataset's ``ood_val_source``:

* ``ood_val.json``: ``data.ood_val.size`` distinct source images (all their copies), what the search
  scores and what the evaluate step reports as OOD-val;
* ``ood_val_holdout.json``: up to ``data.ood_val.holdout_size`` further distinct images, disjoint from
  the first by source image, on which every trial is also scored but which nothing selects on. It comes
  from the dataset's ``ood_val_holdout_source`` when the builder writes one (digits: a second draw of
  images, so the search keeps its whole OOD-val), else from the source images the subset left unused
  (a WILDS OOD ``val`` split holds thousands); without either it is empty and the report says so.

Both manifests carry ``source_ids`` (each example's source image, in the subset's order) so that a
score's standard error can be taken over images, and ``distinct_images``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autoft.data.images import LabeledImages, indices_hash
from autoft.data.manifests import DatasetSplits, load_split, read_manifest, write_manifest
from autoft.data.subsets import distinct_count, example_sources, ood_val_indices
from autoft.errors import DataError

if TYPE_CHECKING:
    from autoft.config import OodValConfig

OOD_VAL_SPLIT = "ood_val"
HOLDOUT_SPLIT = "ood_val_holdout"
HOLDOUT_SOURCE = "ood_val_holdout_source"


@dataclass
class OodValDraw:
    """What the prepare step drew: manifest names (relative to the data folder) and the counts."""

    manifests: dict[str, str]
    indices_hash: str
    distinct: int
    examples: int
    holdout_distinct: int
    holdout_examples: int


def _write_subset(
    out_dir: Path, name: str, source_name: str, manifest: dict, chosen: np.ndarray, sources: np.ndarray
) -> str:
    """A manifest naming ``chosen`` examples of a source split, composed with indices it already applies."""
    base = np.asarray(manifest.get("indices", np.arange(len(sources))))
    fields = {k: v for k, v in manifest.items() if k not in ("schema", "name", "format", "class_names")}
    fields.update(
        indices=base[chosen].tolist(),
        num_examples=len(chosen),
        source_ids=sources[chosen].tolist(),
        distinct_images=distinct_count(sources[chosen]),
        drawn_from=source_name,
    )
    write_manifest(out_dir / f"{name}.json", name, manifest["format"], manifest["class_names"], **fields)
    return f"{name}.json"


def draw_ood_val(out_dir: Path, splits: DatasetSplits, options: OodValConfig, seed: int) -> OodValDraw:
    """Draw and write the search's OOD-val and the held-out re-scoring set (see the module docstring)."""
    out_dir = Path(out_dir)
    source_manifest = read_manifest(out_dir / splits.manifests["ood_val_source"])
    source = load_split(out_dir / splits.manifests["ood_val_source"])
    sources = example_sources(source_manifest, len(source))
    chosen = ood_val_indices(source.labels, options.size, seed, options.class_balanced, sources)
    if len(chosen) == 0:
        raise DataError("the OOD-val subset is empty; check data.ood_val and the OOD-val source split")
    manifests = {
        OOD_VAL_SPLIT: _write_subset(out_dir, OOD_VAL_SPLIT, "ood_val_source", source_manifest, chosen, sources)
    }
    holdout = np.zeros(0, dtype=np.int64)
    holdout_sources = np.zeros(0, dtype=np.int64)
    if options.holdout_size > 0:
        if HOLDOUT_SOURCE in splits.manifests:
            holdout_name = HOLDOUT_SOURCE
            holdout_manifest = read_manifest(out_dir / splits.manifests[HOLDOUT_SOURCE])
            pool = load_split(out_dir / splits.manifests[HOLDOUT_SOURCE])
            holdout_sources = example_sources(holdout_manifest, len(pool))
            if np.isin(holdout_sources, sources[chosen]).any():
                raise DataError(f"dataset {splits.dataset!r}: {HOLDOUT_SOURCE} shares source images with the OOD-val")
            candidates = np.arange(len(pool))
            labels = pool.labels
        else:
            holdout_name, holdout_manifest, holdout_sources = "ood_val_source", source_manifest, sources
            candidates = np.flatnonzero(~np.isin(sources, sources[chosen]))
            labels = source.labels
        if len(candidates):
            # Its own stream: the holdout never changes which images the search scores.
            picked = ood_val_indices(
                labels[candidates],
                options.holdout_size,
                [seed, 1],
                options.class_balanced and options.holdout_size >= len(np.unique(labels[candidates])),
                holdout_sources[candidates],
            )
            holdout = candidates[picked]
            manifests[HOLDOUT_SPLIT] = _write_subset(
                out_dir, HOLDOUT_SPLIT, holdout_name, holdout_manifest, holdout, holdout_sources
            )
    return OodValDraw(
        manifests=manifests,
        indices_hash=indices_hash(chosen),
        distinct=distinct_count(sources[chosen]),
        examples=len(chosen),
        holdout_distinct=distinct_count(holdout_sources[holdout]) if len(holdout) else 0,
        holdout_examples=len(holdout),
    )


def load_scored_split(manifest_path: Path) -> tuple[LabeledImages, np.ndarray]:
    """A split and each example's source image (``source_ids`` where the prepare step wrote them)."""
    split = load_split(manifest_path)
    manifest = read_manifest(manifest_path)
    if "source_ids" in manifest:
        sources = np.asarray(manifest["source_ids"], dtype=np.int64)
        if len(sources) != len(split):
            raise DataError(f"{manifest_path}: {len(sources)} source_ids for {len(split)} examples")
        return split, sources
    return split, example_sources(manifest, len(split))
