"""Labeled image collections and their on-disk split manifests.

A *split* is a list of examples (image, label, group) with the class names of its label space. Large
data stays where it is: a manifest names the images (an array file, a file list, a WILDS split) and
is what pipeline steps pass to each other, never the pixels themselves.
"""

from __future__ import annotations

import csv
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from autoft.storage import atomic_path, atomic_write_text

SPLIT_SCHEMA = "autoft.split/v1"
NO_GROUP = -1


class DataError(ValueError):
    """Data is missing or malformed; the message says where we looked and how to fix it."""


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
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, ValueError) as error:
            raise DataError(f"cannot read image {path}: {error}") from None


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


class TransformedImages(Dataset):
    """A torch Dataset yielding ``(image_tensor, label, group)`` through a transform."""

    def __init__(self, images: LabeledImages, transform: Callable[[Any], torch.Tensor]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = self.images.image(index)
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return self.transform(image), int(self.images.labels[index]), int(self.images.groups[index])


def indices_hash(indices: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Split manifests: what steps pass to each other.
# ----------------------------------------------------------------------------------------------

ManifestLoader = Callable[[dict[str, Any], Path], LabeledImages]
_LOADERS: dict[str, ManifestLoader] = {}


def register_manifest_format(name: str) -> Callable[[ManifestLoader], ManifestLoader]:
    def decorator(loader: ManifestLoader) -> ManifestLoader:
        _LOADERS[name] = loader
        return loader

    return decorator


def write_manifest(path: Path, name: str, fmt: str, class_names: Sequence[str], **fields: Any) -> Path:
    manifest = {"schema": SPLIT_SCHEMA, "name": name, "format": fmt, "class_names": list(class_names), **fields}
    return atomic_write_text(Path(path), json.dumps(manifest, indent=1))


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split manifest not found: {path}; run `autoft prepare` first")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"split manifest {path} is not valid JSON: {error}") from None
    if manifest.get("schema") != SPLIT_SCHEMA:
        raise DataError(f"{path}: expected schema {SPLIT_SCHEMA}, found {manifest.get('schema')!r}")
    return manifest


def load_split(path: str | Path) -> LabeledImages:
    """Load the examples a manifest names; relative URIs resolve against the manifest's folder."""
    path = Path(path)
    manifest = read_manifest(path)
    fmt = manifest.get("format")
    if fmt not in _LOADERS:
        # Dataset modules (data/ds_*.py) register their formats ("wilds", ...) when imported; a stage that
        # only reads manifests has not imported them yet.
        from autoft.data.registry import _import_builtin_builders

        _import_builtin_builders()
    if fmt not in _LOADERS:
        raise DataError(f"{path}: unknown split format {fmt!r}; known: {sorted(_LOADERS)}")
    split = _LOADERS[fmt](manifest, path.parent)
    if "indices" in manifest:
        split = split.subset(manifest["indices"])
    return split


def save_array_split(folder: Path, name: str, split: ArrayImages, **fields: Any) -> Path:
    """Store an in-memory split as ``<name>.npz`` plus ``<name>.json`` manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"{name}.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, images=split.images, labels=split.labels, groups=split.groups)
    return write_manifest(
        folder / f"{name}.json",
        name,
        "npz",
        split.class_names,
        uri=f"{name}.npz",
        num_examples=len(split),
        group_names=split.group_names,
        **fields,
    )


@register_manifest_format("npz")
def _load_npz(manifest: dict[str, Any], base: Path) -> LabeledImages:
    path = base / manifest["uri"]
    if not path.is_file():
        raise DataError(f"array file {path} named by manifest {manifest['name']!r} is missing")
    with np.load(path, allow_pickle=False) as arrays:
        return ArrayImages(
            images=arrays["images"],
            labels=arrays["labels"],
            groups=arrays["groups"],
            class_names=manifest["class_names"],
            group_names=manifest.get("group_names", []),
        )


def save_file_split(folder: Path, name: str, split: FileImages, **fields: Any) -> Path:
    """Store a file-backed split as a CSV (path,label,group) plus its JSON manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / f"{name}.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        writer.writerows(zip(split.paths, split.labels.tolist(), split.groups.tolist(), strict=True))
    return write_manifest(
        folder / f"{name}.json",
        name,
        "files",
        split.class_names,
        uri=f"{name}.csv",
        num_examples=len(split),
        group_names=split.group_names,
        **fields,
    )


@register_manifest_format("files")
def _load_file_list(manifest: dict[str, Any], base: Path) -> LabeledImages:
    path = base / manifest["uri"]
    if not path.is_file():
        raise DataError(f"file list {path} named by manifest {manifest['name']!r} is missing")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return FileImages(
        paths=[row["path"] for row in rows],
        labels=np.array([int(row["label"]) for row in rows], dtype=np.int64),
        groups=np.array([int(row.get("group") or NO_GROUP) for row in rows], dtype=np.int64),
        class_names=manifest["class_names"],
        group_names=manifest.get("group_names", []),
    )
