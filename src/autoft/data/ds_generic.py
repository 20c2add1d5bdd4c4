"""Generic datasets: an image-folder tree ("folder") or CSV manifests ("csv"), and user eval sets.

Also the helpers every file-backed builder shares: resolving ``data.root`` (local or gs://), listing
class-subfolder trees, and a stratified held-out split.

Layouts (docs/datasets.md has the full text):

- ``folder``: ``ROOT/{train,val,test,ood_val}/<class>/<image>``; every other folder of ``ROOT`` that
  holds class subfolders is an OOD test shift named after the folder. Classes = ``train``'s subfolders.
- ``csv``: ``ROOT/{train,val,test,ood_val}.csv`` with a header ``path,label[,group]`` where ``label`` is
  a class NAME; every other ``ROOT/*.csv`` is an OOD test shift. Classes come from ``ROOT/classes.txt``
  (one name per line, in model order) when present, else the sorted labels of ``train.csv``.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autoft.data.images import NO_GROUP, FileImages, check_readable
from autoft.data.manifests import DatasetSplits, save_file_split
from autoft.data.roots import DataRoot, resolve_root
from autoft.data.templates import templates_for
from autoft.errors import ConfigError, DataError
from autoft.urls import is_gcs

if TYPE_CHECKING:
    from autoft.config import AutoFTConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
# Our split key -> the folder / CSV stem users provide.
GENERIC_SPLITS: dict[str, str] = {"id_train": "train", "id_val": "val", "id_test": "test", "ood_val_source": "ood_val"}
CLASSES_FILE = "classes.txt"


# ----------------------------------------------------------------------------------------------
# Helpers shared by the file-backed builders.
# ----------------------------------------------------------------------------------------------


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the visible subfolders of ``folder``."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def images_in(folder: Path) -> list[str]:
    """Sorted absolute paths of the image files directly inside ``folder``."""
    with os.scandir(folder) as entries:
        return sorted(e.path for e in entries if e.is_file() and is_image_file(e.name))


def scan_class_tree(
    folder: Path, label_of: Mapping[str, int], *, what: str, allow_unknown: bool = False
) -> tuple[list[str], np.ndarray]:
    """Paths and labels of ``folder/<class>/<image>``; ``label_of`` maps a subfolder name to a label.

    Subfolders ``label_of`` does not know are an error (a wrong dataset or class order) unless
    ``allow_unknown``, in which case they are skipped.
    """
    names = class_folders(folder)
    unknown = [name for name in names if name not in label_of]
    if unknown and not allow_unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise DataError(
            f"{what}: {len(unknown)} class folders in {folder} are not classes of the training set ({shown}); "
            "the folders must be named like the training classes"
        )
    paths: list[str] = []
    labels: list[int] = []
    for name in names:
        if name not in label_of:
            continue
        files = images_in(folder / name)
        paths.extend(files)
        labels.extend([label_of[name]] * len(files))
    if not paths:
        raise DataError(f"{what}: no images found under {folder}/<class>/ (extensions {sorted(IMAGE_EXTENSIONS)})")
    return paths, np.asarray(labels, dtype=np.int64)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out): ``round(fraction * n_c)`` per class, at least one where a
    class has two or more examples, so ID-val covers every class. Deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(max(round(fraction * len(members)), 1), len(members) - 1)
        if count > 0:
            held.append(rng.choice(members, size=count, replace=False))
    held_out = np.sort(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)
    if len(held_out) == 0:
        raise DataError("too few training examples to hold out an ID-val split (need two per class)")
    kept = np.setdiff1d(np.arange(len(labels)), held_out)
    return kept, held_out


def subset_files(images: FileImages, indices: np.ndarray) -> FileImages:
    return FileImages(
        paths=[images.paths[i] for i in indices],
        labels=images.labels[indices],
        class_names=images.class_names,
        groups=images.groups[indices],
        group_names=images.group_names,
    )


# ----------------------------------------------------------------------------------------------
# Eval sets (config.data.eval_sets) and CSV manifests.
# ----------------------------------------------------------------------------------------------


def _name_index(class_names: Sequence[str]) -> dict[str, int]:
    """Exact names first; a name also matches case-insensitively with '_' read as ' ' when unique."""
    index = {name: i for i, name in enumerate(class_names)}
    loose: dict[str, list[int]] = {}
    for i, name in enumerate(class_names):
        loose.setdefault(_loose(name), []).append(i)
    for key, hits in loose.items():
        if len(hits) == 1 and key not in index:
            index[key] = hits[0]
    return index


def _loose(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def _lookup(index: dict[str, int], name: str) -> int | None:
    return index.get(name, index.get(_loose(name)))


def _unknown_names_error(what: str, unknown: Sequence[str], class_names: Sequence[str]) -> DataError:
    shown = ", ".join(repr(n) for n in list(unknown)[:5]) + (" ..." if len(unknown) > 5 else "")
    known = ", ".join(repr(n) for n in list(class_names)[:8]) + (" ..." if len(class_names) > 8 else "")
    return DataError(
        f"{what}: {len(unknown)} class names are not classes of the model ({shown}); "
        f"labels are matched by class NAME to the model's classes ({known})"
    )


def read_csv_split(
    path: Path, class_names: Sequence[str], *, what: str, allow_outside_paths: bool = False
) -> FileImages:
    """A CSV manifest ``path,label[,group]`` (label = class name); relative paths are relative to it.

    Rows may only name images inside the CSV's folder (no absolute paths, no ``..``), so a manifest
    from elsewhere cannot make a step read arbitrary files, unless ``allow_outside_paths``.
    """
    if not path.is_file():
        raise DataError(f"{what}: CSV manifest {path} not found")
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{what}: cannot read CSV manifest {path}: {error}") from None
    if "path" not in fields or "label" not in fields:
        raise DataError(f"{what}: {path} needs a header with columns path,label[,group]; found {fields}")
    if not rows:
        raise DataError(f"{what}: {path} lists no images")
    index = _name_index(class_names)
    unknown = sorted({row["label"] for row in rows if _lookup(index, row["label"] or "") is None})
    if unknown:
        raise _unknown_names_error(f"{what} ({path})", unknown, class_names)
    base = path.parent.resolve()
    paths = [str((base / (row["path"] or "")).resolve()) for row in rows]
    if not allow_outside_paths:
        outside = [row["path"] for row, full in zip(rows, paths, strict=True) if not Path(full).is_relative_to(base)]
        if outside:
            raise DataError(
                f"{what}: {len(outside)} rows of {path} name images outside its folder, e.g. {outside[0]!r}; keep "
                "images below the CSV's folder, or allow it (eval set option allow_absolute_paths: true, or "
                "--allow-outside-paths)"
            )
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{what}: {len(missing)} images listed in {path} do not exist, e.g. {missing[0]}")
    labels = np.asarray([_lookup(index, row["label"]) for row in rows], dtype=np.int64)
    groups = np.full(len(rows), NO_GROUP, dtype=np.int64)
    group_names: list[str] = []
    if "group" in fields:
        values = [row["group"] or "" for row in rows]
        group_names = sorted({v for v in values if v})
        group_id = {name: i for i, name in enumerate(group_names)}
        groups = np.asarray([group_id.get(v, NO_GROUP) for v in values], dtype=np.int64)
    return FileImages(paths=paths, labels=labels, class_names=list(class_names), groups=groups, group_names=group_names)


def read_folder_split(folder: Path, class_names: Sequence[str], *, what: str) -> FileImages:
    """``folder/<class name>/<image>``, class folders matched by name to ``class_names``."""
    if not folder.is_dir():
        raise DataError(f"{what}: folder {folder} not found")
    index = _name_index(class_names)
    names = class_folders(folder)
    if not names:
        raise DataError(f"{what}: {folder} has no class subfolders; expected {folder}/<class name>/<image>")
    unknown = [name for name in names if _lookup(index, name) is None]
    if unknown:
        raise _unknown_names_error(f"{what} ({folder})", unknown, class_names)
    label_of = {name: int(_lookup(index, name)) for name in names}  # type: ignore[arg-type]
    paths, labels = scan_class_tree(folder, label_of, what=what)
    return FileImages(paths=paths, labels=labels, class_names=list(class_names))


def refuse_links_outside(paths: Sequence[str], folder: Path, what: str) -> None:
    """An eval folder's images must be in it: a symlink (a file or a class folder) leading elsewhere would let
    a folder from someone else make a step read arbitrary files, the escape CSV paths already refuse."""
    base = folder.resolve()
    outside = [path for path in paths if not Path(os.path.realpath(path)).is_relative_to(base)]
    if outside:
        raise DataError(
            f"{what}: {len(outside)} images are symbolic links leading outside {folder}, e.g. {outside[0]!r}; copy "
            "the images into the folder"
        )


def eval_set_root(kind: str, location: str | Path) -> DataRoot | None:
    """The root a manifest of this eval set records: a gs:// folder (its images are staged per pod);
    local eval sets keep their paths, which must be on a volume every step mounts."""
    return DataRoot.of(str(location)) if kind == "folder" and is_gcs(str(location)) else None


def load_eval_set(
    kind: str, path: str | Path, class_names: Sequence[str], allow_outside_paths: bool = False
) -> FileImages:
    """An extra evaluation shift: an image folder or a CSV manifest, labels mapped by class NAME.

    Labels are re-indexed to ``class_names`` (the model's class order), so an eval set may hold a
    subset of the classes in any order; a name the model does not know is an error, not a silent drop.
    Every image is opened first: broken ones are reported together, before any compute.
    """
    location = str(path)
    if is_gcs(location):
        from autoft.storage import stage_to_local

        local = Path(stage_to_local(location))
    else:
        local = Path(location).expanduser()
    what = f"eval set {location!r}"
    if kind == "folder":
        images = read_folder_split(local, class_names, what=what)
        refuse_links_outside(images.paths, local, what)
    elif kind == "csv":
        images = read_csv_split(local, class_names, what=what, allow_outside_paths=allow_outside_paths)
    else:
        raise ConfigError(f"eval set kind must be 'folder' or 'csv', got {kind!r}")
    check_readable(images, what)
    return images


# ----------------------------------------------------------------------------------------------
# Builders.
# ----------------------------------------------------------------------------------------------

FOLDER_HOW_TO = (
    "Expected ROOT/{train,val,test,ood_val}/<class>/<image> (any other ROOT/<shift>/<class>/ folder is an "
    "OOD test); copy a bucket with `gcloud storage cp -r gs://BUCKET/PATH ROOT` or set data.root=gs://BUCKET/PATH."
)
CSV_HOW_TO = (
    "Expected ROOT/{train,val,test,ood_val}.csv with header path,label[,group] (label = class name; any other "
    "ROOT/*.csv is an OOD test) and optionally ROOT/classes.txt; see docs/datasets.md."
)


def _splits_result(
    dataset: str,
    out_dir: Path,
    splits: dict[str, FileImages],
    ood_tests: list[str],
    class_names: list[str],
    root: DataRoot,
) -> DatasetSplits:
    clashes = [name for name in ood_tests if name in GENERIC_SPLITS]
    if clashes:
        raise DataError(f"{dataset} dataset: OOD test shifts may not be named {clashes}; rename them")
    manifests = {}
    for name, images in splits.items():
        save_file_split(out_dir, name, images, root=root)
        manifests[name] = f"{name}.json"
    return DatasetSplits(
        dataset=dataset,
        class_names=class_names,
        templates=templates_for(dataset),
        manifests=manifests,
        ood_val_set="ood_val",
        ood_tests=ood_tests,
    )


def build_folder(config: AutoFTConfig, out_dir: Path) -> DatasetSplits:
    data_root = resolve_root(config.data.root, "folder", FOLDER_HOW_TO)
    root = data_root.local
    missing = [name for name in GENERIC_SPLITS.values() if not (root / name).is_dir()]
    if missing:
        raise DataError(f"folder dataset at {root}: missing split folders {missing}. {FOLDER_HOW_TO}")
    class_names = class_folders(root / "train")
    if not class_names:
        raise DataError(f"folder dataset: {root / 'train'} has no class subfolders. {FOLDER_HOW_TO}")
    shift_dirs = [d for d in class_folders(root) if d not in GENERIC_SPLITS.values() and class_folders(root / d)]
    splits = {
        ours: read_folder_split(root / theirs, class_names, what=f"folder dataset split {theirs!r}")
        for ours, theirs in GENERIC_SPLITS.items()
    }
    for shift in shift_dirs:
        splits[shift] = read_folder_split(root / shift, class_names, what=f"folder dataset shift {shift!r}")
    return _splits_result("folder", out_dir, splits, shift_dirs, class_names, data_root)


def _csv_class_names(root: Path) -> list[str]:
    classes_file = root / CLASSES_FILE
    if classes_file.is_file():
        names = [line.strip() for line in classes_file.read_text().splitlines() if line.strip()]
        if len(set(names)) != len(names):
            raise DataError(f"{classes_file} lists a class name twice")
        if names:
            return names
    with open(root / "train.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        if "label" not in (reader.fieldnames or []):
            raise DataError(f"{root / 'train.csv'} needs a header with columns path,label[,group]")
        names = sorted({row["label"] for row in reader if row["label"]})
    if not names:
        raise DataError(f"{root / 'train.csv'} lists no labelled images")
    return names


def build_csv(config: AutoFTConfig, out_dir: Path) -> DatasetSplits:
    data_root = resolve_root(config.data.root, "csv", CSV_HOW_TO)
    root = data_root.local
    missing = [f"{name}.csv" for name in GENERIC_SPLITS.values() if not (root / f"{name}.csv").is_file()]
    if missing:
        raise DataError(f"csv dataset at {root}: missing manifests {missing}. {CSV_HOW_TO}")
    class_names = _csv_class_names(root)
    shift_names = sorted(p.stem for p in root.glob("*.csv") if p.stem not in GENERIC_SPLITS.values())
    splits = {
        ours: read_csv_split(root / f"{theirs}.csv", class_names, what=f"csv dataset split {theirs!r}")
        for ours, theirs in GENERIC_SPLITS.items()
    }
    for shift in shift_names:
        splits[shift] = read_csv_split(root / f"{shift}.csv", class_names, what=f"csv dataset shift {shift!r}")
    return _splits_result("csv", out_dir, splits, shift_names, class_names, data_root)
