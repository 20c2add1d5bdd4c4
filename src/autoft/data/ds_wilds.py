"""WILDS iWildCam v2.0 and FMoW v1.1 through the ``wilds`` package, with the official splits.

Split mapping (both datasets): WILDS ``train`` -> ``id_train``, ``id_val`` -> ``id_val``, ``id_test`` ->
``id_test``, ``val`` (OOD validation) -> ``ood_val_source`` and ``test`` (OOD test) -> ``ood_test``.

Manifests use the ``wilds`` format: dataset name, version, the WILDS root as a URI (the folder that
holds ``<name>_v<version>/``: a gs:// prefix or a mounted folder, never a pod's local staging path) and
split name (plus the optional ``indices`` that ``load_split`` applies). Labels and groups come from the
WILDS dataset object and images are read through its ``get_input``, so our examples are exactly the
official ones. From a gs:// root, a step stages the metadata files and only its split's images.

Groups: FMoW's are its regions (the metadata field WILDS evaluates worst-region accuracy over), with
WILDS' catch-all region "Other" mapped to NO_GROUP because WILDS leaves it out of ``acc_worst_region``;
that makes our ``worst_group_accuracy`` equal WILDS' number. iWildCam has no groups: its locations
(camera traps) are disjoint between splits and its metric is macro-F1, so a worst-location number
would only clutter reports.

The WILDS download hosts are gone, so ``download=False`` always and a missing copy is a DataError that
says where we looked and how to stage one from a bucket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from autoft.data.images import NO_GROUP, LabeledImages, SubsetImages
from autoft.data.manifests import DatasetSplits, write_manifest
from autoft.data.roots import DataRoot, resolve_root
from autoft.data.templates import templates_for
from autoft.data.wilds_compat import import_wilds
from autoft.errors import DataError

if TYPE_CHECKING:
    from autoft.config import AutoFTConfig

log = logging.getLogger(__name__)

WILDS_FORMAT = "wilds"
# Our split key -> WILDS' split name.
WILDS_SPLITS: dict[str, str] = {
    "id_train": "train",
    "id_val": "id_val",
    "id_test": "id_test",
    "ood_val_source": "val",
    "ood_test": "test",
}
OOD_TEST = "ood_test"
OTHER_REGION = "Other"


@dataclass(frozen=True)
class WildsSpec:
    name: str
    version: str
    metadata_files: tuple[str, ...]
    official_metric: str  # the key of WILDS' eval() result the paper reports
    image_hint: str  # where the images live, for error messages

    @property
    def folder(self) -> str:
        return f"{self.name}_v{self.version}"

    @property
    def release_file(self) -> str:
        return f"RELEASE_v{self.version}.txt"


SPECS: dict[str, WildsSpec] = {
    "iwildcam": WildsSpec("iwildcam", "2.0", ("metadata.csv",), "F1-macro_all", "train/<filename>"),
    "fmow": WildsSpec(
        "fmow", "1.1", ("rgb_metadata.csv", "country_code_mapping.csv"), "acc_worst_region", "images/rgb_img_<i>.png"
    ),
}


def how_to_stage(spec: WildsSpec) -> str:
    return (
        f"Stage the WILDS copy from a bucket (the WILDS download hosts are gone), e.g. "
        f"`gcloud storage cp -r gs://BUCKET/wilds/{spec.folder} DATA_ROOT/` (or `gsutil -m cp -r ...`), then set "
        f"data.root=DATA_ROOT (the folder that CONTAINS {spec.folder}/), or set data.root=gs://BUCKET/wilds to stage "
        "it automatically; see docs/datasets.md."
    )


# ----------------------------------------------------------------------------------------------
# Opening a WILDS dataset (once per process), with our errors instead of WILDS' stack traces.
# ----------------------------------------------------------------------------------------------

_OPEN: dict[tuple[str, str], Any] = {}


def wilds_root_dir(root: Path, spec: WildsSpec) -> Path:
    """The WILDS ``root_dir`` (the parent of ``<name>_v<version>``) for a root given either way."""
    if (root / spec.folder).is_dir():
        return root
    if root.name == spec.folder:
        return root.parent
    raise DataError(f"{spec.name}: no {spec.folder}/ folder in {root}. {how_to_stage(spec)}")


def check_layout(root_dir: Path, spec: WildsSpec) -> None:
    data_dir = root_dir / spec.folder
    missing = [name for name in (spec.release_file, *spec.metadata_files) if not (data_dir / name).is_file()]
    if missing:
        raise DataError(
            f"{spec.name}: {data_dir} is incomplete: missing {missing} (WILDS v{spec.version} needs them, and "
            f"images under {spec.folder}/{spec.image_hint}). {how_to_stage(spec)}"
        )


def open_wilds_dataset(name: str, root_dir: str | Path) -> Any:
    """The WILDS dataset object, cached per process (parsing the metadata takes seconds on real data)."""
    spec = SPECS[name]
    key = (name, str(root_dir))
    if key in _OPEN:
        return _OPEN[key]
    root_dir = Path(root_dir)
    check_layout(root_dir, spec)
    wilds = import_wilds()
    try:
        dataset = wilds.get_dataset(dataset=name, version=spec.version, root_dir=str(root_dir), download=False)
    except (KeyError, AssertionError, ValueError, TypeError, IndexError, OSError, pd.errors.ParserError) as error:
        raise DataError(
            f"{name}: the WILDS copy at {root_dir / spec.folder} is malformed ({type(error).__name__}: {error}); "
            f"re-stage it. {how_to_stage(spec)}"
        ) from error
    _OPEN[key] = dataset
    return dataset


# ----------------------------------------------------------------------------------------------
# A WILDS split as LabeledImages.
# ----------------------------------------------------------------------------------------------


class WildsImages(LabeledImages):
    """One WILDS split; ``dataset_indices[i]`` is example i's index in the full WILDS dataset.

    Picklable for DataLoader workers: it holds only names, paths and arrays; each worker opens the
    WILDS dataset once (module cache) on its first image.
    """

    def __init__(
        self,
        dataset_name: str,
        root_dir: str,
        split: str,
        dataset_indices: np.ndarray,
        labels: np.ndarray,
        groups: np.ndarray,
        class_names: list[str],
        group_names: list[str],
    ) -> None:
        self.dataset_name = dataset_name
        self.root_dir = root_dir
        self.split = split
        self.dataset_indices = np.asarray(dataset_indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.groups = np.asarray(groups, dtype=np.int64)
        self.class_names = list(class_names)
        self.group_names = list(group_names)
        self._check()

    @property
    def wilds_dataset(self) -> Any:
        return open_wilds_dataset(self.dataset_name, self.root_dir)

    def image(self, index: int) -> Image.Image:
        idx = int(self.dataset_indices[index])
        try:
            raw = self.wilds_dataset.get_input(idx)
        except OSError as error:
            raise DataError(f"{self.dataset_name}: cannot read image {idx} of split {self.split!r}: {error}") from None
        # iWildCam's get_input returns a lazily opened file: decode it once here and close it.
        try:
            return raw.convert("RGB")
        finally:
            raw.close()


def _groups_for(dataset: Any, name: str, indices: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """FMoW's region of each example through WILDS' own CombinatorialGrouper (the one its eval uses)."""
    if name != "fmow":
        return np.full(len(indices), NO_GROUP, dtype=np.int64), []
    from wilds.common.grouper import CombinatorialGrouper

    grouper = CombinatorialGrouper(dataset, ["region"])
    groups = grouper.metadata_to_group(dataset.metadata_array[torch.as_tensor(indices)]).numpy().astype(np.int64)
    names = [grouper.group_str(g).removeprefix("region = ") for g in range(grouper.n_groups)]
    # WILDS leaves every region named like "Other" out of acc_worst_region; so do we.
    for group_id, region in enumerate(names):
        if OTHER_REGION in region:
            groups[groups == group_id] = NO_GROUP
    return groups, names


def split_images(dataset: Any, name: str, root_dir: str | Path, split: str, class_names: list[str]) -> WildsImages:
    if split not in dataset.split_dict:
        raise DataError(f"{name}: WILDS has no split {split!r}; known: {sorted(dataset.split_dict)}")
    indices = np.flatnonzero(np.asarray(dataset.split_array) == dataset.split_dict[split])
    if len(indices) == 0:
        raise DataError(f"{name}: WILDS split {split!r} of {Path(root_dir) / SPECS[name].folder} is empty")
    labels = dataset.y_array[torch.as_tensor(indices)].numpy()
    groups, group_names = _groups_for(dataset, name, indices)
    return WildsImages(name, str(root_dir), split, indices, labels, groups, class_names, group_names)


def image_relatives(dataset: Any, name: str, indices: np.ndarray) -> list[str]:
    """Where each example's image lives below the WILDS root (what ``get_input`` opens)."""
    folder = SPECS[name].folder
    if name == "iwildcam":
        return [f"{folder}/train/{dataset._input_array[int(i)]}" for i in indices]
    return [f"{folder}/images/rgb_img_{int(dataset.full_idxs[int(i)])}.png" for i in indices]


def load_wilds_manifest(manifest: dict[str, Any], base: Path) -> LabeledImages:
    del base  # the WILDS root is a URI of its own: data stays in its bucket or volume
    name = manifest.get("dataset")
    if name not in SPECS:
        raise DataError(f"manifest {manifest.get('name')!r}: unknown WILDS dataset {name!r}; known: {sorted(SPECS)}")
    spec = SPECS[name]
    root = DataRoot.of(manifest["root"])
    if root.remote:
        root.localize([f"{spec.folder}/{file}" for file in (spec.release_file, *spec.metadata_files)])
    dataset = open_wilds_dataset(name, root.local)
    images = split_images(dataset, name, root.local, manifest["split"], manifest["class_names"])
    if root.remote:  # this split's images only (or the subset load_split will take), fetched in parallel
        wanted = images.dataset_indices[np.asarray(manifest.get("indices", np.arange(len(images))), dtype=np.int64)]
        root.localize(image_relatives(dataset, name, wanted), progress=len(wanted) > 1000)
    return images


# ----------------------------------------------------------------------------------------------
# Class names.
# ----------------------------------------------------------------------------------------------


def iwildcam_class_names(data_dir: Path, n_classes: int) -> list[str]:
    """Names from ``categories.csv`` (columns ``y`` and ``name``) when present, else ``class {i}``."""
    path = data_dir / "categories.csv"
    names = [f"class {i}" for i in range(n_classes)]
    if not path.is_file():
        log.warning("%s not found: iWildCam classes are named 'class <i>', which weakens zero-shot prompts", path)
        return names
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise DataError(f"iwildcam: cannot read {path}: {error}") from None
    if "name" not in table.columns:
        raise DataError(f"iwildcam: {path} needs a 'name' column (and 'y'); found {list(table.columns)}")
    ys = table["y"].tolist() if "y" in table.columns else list(range(len(table)))
    for y, name in zip(ys, table["name"].tolist(), strict=True):
        if isinstance(y, (int, np.integer)) and 0 <= y < n_classes and isinstance(name, str) and name.strip():
            names[int(y)] = name.strip()
    return names


def fmow_class_names() -> list[str]:
    """WILDS' 62 FMoW categories in label order, underscores read as spaces for the prompts."""
    import_wilds()
    from wilds.datasets.fmow_dataset import categories

    return [c.replace("_", " ") for c in categories]


# ----------------------------------------------------------------------------------------------
# Builders.
# ----------------------------------------------------------------------------------------------


def _check_images(images: WildsImages) -> None:
    """Open the first and last image of a split: catches a copy whose metadata came without images."""
    spec = SPECS[images.dataset_name]
    for position in sorted({0, len(images) - 1}):
        idx = int(images.dataset_indices[position])
        try:
            raw = images.wilds_dataset.get_input(idx)
            raw.close()
        except OSError as error:
            raise DataError(
                f"{spec.name}: image {idx} of split {images.split!r} is missing or unreadable ({error}); images "
                f"belong under {Path(images.root_dir) / spec.folder}/{spec.image_hint}. {how_to_stage(spec)}"
            ) from None


def build_wilds(name: str, config: AutoFTConfig, out_dir: Path) -> DatasetSplits:
    spec = SPECS[name]
    data_root = resolve_root(config.data.root, name, how_to_stage(spec))
    root_dir = wilds_root_dir(data_root.local, spec)
    # The URI of root_dir: data.root itself, or its parent when it names the <name>_v<version> folder.
    root_uri = data_root.uri if root_dir == data_root.local else data_root.uri.rstrip("/").rsplit("/", 1)[0]
    dataset = open_wilds_dataset(name, root_dir)
    if name == "iwildcam":
        class_names = iwildcam_class_names(root_dir / spec.folder, int(dataset.n_classes))
    else:
        class_names = fmow_class_names()
    manifests: dict[str, str] = {}
    for ours, theirs in WILDS_SPLITS.items():
        images = split_images(dataset, name, root_dir, theirs, class_names)
        _check_images(images)
        write_manifest(
            Path(out_dir) / f"{ours}.json",
            ours,
            WILDS_FORMAT,
            class_names,
            dataset=name,
            version=spec.version,
            root=root_uri,
            split=theirs,
            num_examples=len(images),
            group_names=images.group_names,
        )
        manifests[ours] = f"{ours}.json"
    return DatasetSplits(
        dataset=name,
        class_names=class_names,
        templates=templates_for(name),
        manifests=manifests,
        ood_val_set="wilds_val",
        ood_tests=[OOD_TEST],
        extra={"wilds_version": spec.version, "wilds_root": root_uri, "official_metric": spec.official_metric},
    )


def build_iwildcam(config: AutoFTConfig, out_dir: Path) -> DatasetSplits:
    return build_wilds("iwildcam", config, out_dir)


def build_fmow(config: AutoFTConfig, out_dir: Path) -> DatasetSplits:
    return build_wilds("fmow", config, out_dir)


# ----------------------------------------------------------------------------------------------
# Official evaluation.
# ----------------------------------------------------------------------------------------------


def _wilds_source(images: LabeledImages) -> tuple[WildsImages, np.ndarray]:
    """The WildsImages under (possibly nested) subsets, and our positions in it."""
    positions = np.arange(len(images))
    while isinstance(images, SubsetImages):
        positions = images.indices[positions]
        images = images.parent
    if not isinstance(images, WildsImages):
        raise TypeError(f"official WILDS metrics need a WILDS split, got {type(images).__name__}")
    return images, positions


def is_wilds_split(images: LabeledImages) -> bool:
    while isinstance(images, SubsetImages):
        images = images.parent
    return isinstance(images, WildsImages)


def wilds_official_metrics(images: LabeledImages, labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """WILDS' own ``dataset.eval`` on our predictions for a WILDS split (in the split's order).

    Returns every number WILDS reports (e.g. ``F1-macro_all`` for iWildCam, ``acc_worst_region`` for
    FMoW) as floats; the evaluate stage reports the headline metric from here.
    """
    source, positions = _wilds_source(images)
    if len(labels) != len(positions):
        raise ValueError(f"{len(labels)} predictions for a split of {len(positions)} examples")
    indices = torch.as_tensor(source.dataset_indices[positions])
    dataset = source.wilds_dataset
    y_true = dataset.y_array[indices]
    if not np.array_equal(y_true.numpy(), labels):
        raise ValueError("the predictions' labels differ from the WILDS split's: predictions are not in split order")
    results, _ = dataset.eval(torch.as_tensor(predicted), y_true, dataset.metadata_array[indices])
    return {key: float(value) for key, value in results.items()}
