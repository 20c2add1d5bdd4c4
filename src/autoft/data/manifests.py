"""Split manifests: the small JSON files that name a split's images, which pipeline steps pass around.

A manifest holds a format name, the class names and what that format needs to find the examples
(an array file, a CSV file list, a WILDS split, ...). Files the prepare step wrote (arrays, file
lists) are named relative to the manifest's own folder, so a prepared-data folder can move (to
another pod, as a KFP artifact) without breaking; the dataset's own images are named relative to
its ``root`` (a gs:// prefix or a mounted folder; :mod:`autoft.data.roots`), never by a path that
only the preparing machine has. Two formats are built in (``npz`` arrays and ``files`` lists); dataset modules
define the others, found through :mod:`autoft.data.registry`.
"""

from __future__ import annotations

import csv
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoft.atomic import atomic_path, atomic_write_text
from autoft.data.images import NO_GROUP, ArrayImages, FileImages, LabeledImages
from autoft.data.registry import get_format_loader
from autoft.data.roots import DataRoot
from autoft.errors import DataError

SPLIT_SCHEMA = "autoft.split/v1"
REQUIRED_SPLITS = ("id_train", "id_val", "id_test", "ood_val_source")


@dataclass
class DatasetSplits:
    """What a dataset builder produced; manifest paths are relative to the prepared-data folder."""

    dataset: str
    class_names: list[str]
    templates: list[str]
    manifests: dict[str, str]
    ood_val_set: str
    ood_tests: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        missing = [name for name in (*REQUIRED_SPLITS, *self.ood_tests) if name not in self.manifests]
        if missing:
            raise DataError(f"dataset {self.dataset!r} did not produce the splits {missing}")


def write_manifest(path: Path, name: str, fmt: str, class_names: Sequence[str], **fields: Any) -> Path:
    manifest = {"schema": SPLIT_SCHEMA, "name": name, "format": fmt, "class_names": list(class_names), **fields}
    return atomic_write_text(Path(path), json.dumps(manifest, indent=1))


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split manifest not found: {path}; run `autoft step prepare` first")
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
    loader = BUILTIN_FORMATS.get(fmt) or get_format_loader(str(fmt))
    if loader is None:
        raise DataError(f"{path}: unknown split format {fmt!r}; known: {sorted(BUILTIN_FORMATS)} and dataset formats")
    split = loader(manifest, path.parent)
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


def load_npz(manifest: dict[str, Any], base: Path) -> LabeledImages:
    path = base / manifest["uri"]
    if not path.is_file():
        raise DataError(f"array file {path} named by manifest {manifest['name']!r} is missing")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            images, labels, groups = arrays["images"], arrays["labels"], arrays["groups"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        # Not an .npz of ours (truncated, overwritten, a pickle): one line naming the file, not numpy's traceback.
        raise DataError(
            f"array file {path} of split {manifest.get('name')!r} is corrupt ({' '.join(str(error).split())[:160]}); "
            "prepare the data again"
        ) from None
    return ArrayImages(
        images=images,
        labels=labels,
        groups=groups,
        class_names=manifest["class_names"],
        group_names=manifest.get("group_names", []),
    )


def save_file_split(
    folder: Path, name: str, split: FileImages, fmt: str = "files", root: DataRoot | None = None, **fields: Any
) -> Path:
    """Store a file-backed split as a CSV (path,label,group) plus its JSON manifest (format ``fmt``).

    With ``root``, paths are recorded relative to it and the manifest records ``root.uri``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [root.relative(path, f"split {name!r}") for path in split.paths] if root else list(split.paths)
    if root:
        fields["root"] = root.uri
    with atomic_path(folder / f"{name}.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        writer.writerows(zip(paths, split.labels.tolist(), split.groups.tolist(), strict=True))
    return write_manifest(
        folder / f"{name}.json",
        name,
        fmt,
        split.class_names,
        uri=f"{name}.csv",
        num_examples=len(split),
        group_names=split.group_names,
        **fields,
    )


def load_file_list(manifest: dict[str, Any], base: Path) -> FileImages:
    path = base / manifest["uri"]
    if not path.is_file():
        raise DataError(f"file list {path} named by manifest {manifest['name']!r} is missing")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    paths = [row["path"] for row in rows]
    if manifest.get("root"):
        root = DataRoot.of(manifest["root"])
        # Fetch only what will be read: a subset manifest (the OOD-val draw) names its rows by index.
        wanted = [paths[i] for i in manifest["indices"]] if "indices" in manifest else paths
        root.localize(wanted, progress=len(wanted) > 1000)
        paths = [str(root.local / path) for path in paths]
    return FileImages(
        paths=paths,
        labels=np.array([int(row["label"]) for row in rows], dtype=np.int64),
        groups=np.array([int(row.get("group") or NO_GROUP) for row in rows], dtype=np.int64),
        class_names=manifest["class_names"],
        group_names=manifest.get("group_names", []),
    )


def logits_fn_from_manifest(manifest: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The projection from the model's logits to a shift's classes, or None when there is none.

    ``logit_indices``: class k of the shift is model class ``indices[k]``. ``logit_groups``: class k
    is the set ``groups[k]`` of model classes and scores as their max logit, so the arg-max over the
    shift's classes is right exactly when the model's top class (among all grouped ones) is one of
    the true class's members: the ObjectNet protocol of the WiSE-FT/FLYP evaluation.
    """
    if manifest.get("logit_indices") is not None:
        index = torch.as_tensor(manifest["logit_indices"], dtype=torch.long)
        return lambda logits: logits[:, index.to(logits.device)]
    if manifest.get("logit_groups") is not None:
        groups = manifest["logit_groups"]
        if not groups or any(len(g) == 0 for g in groups):
            raise DataError(f"manifest {manifest.get('name')!r}: logit_groups must be non-empty lists")
        width = max(len(g) for g in groups)
        # Pad each group with its own first member: repeating a member leaves the max unchanged.
        padded = torch.as_tensor([list(g) + [g[0]] * (width - len(g)) for g in groups], dtype=torch.long)
        return lambda logits: logits[:, padded.to(logits.device)].amax(dim=-1)
    return None


BUILTIN_FORMATS = {"npz": load_npz, "files": load_file_list}
