"""The ImageNet family from class-subfolder trees: ImageNet-1k, -C, -V2, -R, -A, -Sketch and ObjectNet.

Class order = the sorted WNIDs of ``train/`` (the order torchvision and the OpenAI weights use). The ID
validation split used for model selection is held out of ``train`` (stratified, seeded); ImageNet's own
``val`` is the ID test set. ImageNet-C (chosen corruptions at one severity) is the source of the
search's OOD-val subset; the OOD tests are V2, R, A, Sketch and ObjectNet.

Shifts with fewer classes than the model carry their logit projection in the manifest:
``logit_indices`` (ImageNet-R and -A: 200 classes; the eval stage applies ``logits[:, indices]``) or
``logit_groups`` (ObjectNet: each of its 113 classes is one or more ImageNet classes, scored by the
max logit of its group). The indices are computed from the folders present, not hard-coded, so any
class subset works. ``autoft.data.manifests.logits_fn_from_manifest`` turns either field into the
``logits_fn`` that ``evaluate.predict`` takes.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from autoft.data.ds_generic import class_folders, scan_class_tree, stratified_holdout, subset_files
from autoft.data.images import FileImages, LabeledImages
from autoft.data.manifests import DatasetSplits, load_file_list, save_file_split
from autoft.data.options import ImagenetOptions
from autoft.data.roots import DataRoot, resolve_root
from autoft.data.templates import templates_for
from autoft.errors import DataError

if TYPE_CHECKING:
    from autoft.config import AutoFTConfig

log = logging.getLogger(__name__)

CLASS_NAME_FILES = ("classnames.txt", "LOC_synset_mapping.txt")
IMAGENET_1K_CLASSES = 1000  # open_clip.IMAGENET_CLASSNAMES names exactly these, in sorted-WNID order
VAL_SOLUTION_FILE = "LOC_val_solution.csv"  # Kaggle's ImageNet layout: flat val/ plus this CSV
OBJECTNET_MAPPING_FILES = (
    "folder_to_objectnet_label.json",
    "objectnet_to_imagenet_1k.json",
    "pytorch_to_imagenet_2012_id.json",
    "imagenet_to_label_2012_v2",
)
CROPPED_FORMAT = "cropped_files"
_WNID = re.compile(r"^n\d{8}$")

HOW_TO_STAGE = (
    "Stage the folders from a bucket, e.g. `gcloud storage cp -r gs://BUCKET/imagenet DATA_ROOT` (or `gsutil -m cp "
    "-r ...`), and set data.root=DATA_ROOT, or set data.root=gs://BUCKET/imagenet to stage automatically; drop shifts "
    "you do not have from data.options.shifts and rename folders with data.options.dirs. See docs/datasets.md."
)


# ----------------------------------------------------------------------------------------------
# ObjectNet images carry a thin red border that evaluations crop off.
# ----------------------------------------------------------------------------------------------


@dataclass
class CroppedFileImages(FileImages):
    border: int = 0

    def image(self, index: int) -> Image.Image:
        image = super().image(index)
        width, height = image.size
        if self.border and width > 2 * self.border and height > 2 * self.border:
            image = image.crop((self.border, self.border, width - self.border, height - self.border))
        return image


def load_cropped_manifest(manifest: dict[str, Any], base: Path) -> LabeledImages:
    plain = load_file_list(manifest, base)
    assert isinstance(plain, FileImages)
    return CroppedFileImages(
        paths=plain.paths,
        labels=plain.labels,
        class_names=plain.class_names,
        groups=plain.groups,
        group_names=plain.group_names,
        border=int(manifest.get("crop_border", 0)),
    )


def save_cropped_split(
    folder: Path, name: str, images: FileImages, border: int, root: DataRoot | None = None, **fields: Any
) -> Path:
    """A file list in the CSV layout of ``save_file_split``, read back with ``border`` px cropped."""
    return save_file_split(folder, name, images, fmt=CROPPED_FORMAT, root=root, crop_border=border, **fields)


# ----------------------------------------------------------------------------------------------
# Class names and layout checks.
# ----------------------------------------------------------------------------------------------


def imagenet_class_names(root: Path, wnids: Sequence[str]) -> list[str]:
    """Human-readable class names in WNID order.

    In order: the user's ``classnames.txt`` (``<wnid> <name>`` lines, or one name per line in class
    order); for the full 1,000 classes, open_clip's ``IMAGENET_CLASSNAMES`` (the names CLIP's published
    zero-shot numbers were measured with; WordNet's first synonyms would repeat "crane" and "maillot");
    for a class subset, the first synonym of Kaggle's ``LOC_synset_mapping.txt``. Names from a file must
    be distinct, or two classes would share one text embedding. (CLIP's own list names two pairs of
    classes alike, "missile" and "sunglasses"; it is kept as published.)
    """
    names = _names_from_file(root / CLASS_NAME_FILES[0], wnids, first_synonym=False)
    if names is None and len(wnids) == IMAGENET_1K_CLASSES:
        from open_clip import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    if names is None:
        names = _names_from_file(root / CLASS_NAME_FILES[1], wnids, first_synonym=True)
    if names is None:
        log.warning("no %s in %s: class names are WNIDs, which zero-shot prompts cannot use", CLASS_NAME_FILES, root)
        return list(wnids)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(
            f"imagenet: the class names {repeated[:5]} name several classes, so their zero-shot prompts would be "
            f"identical; give distinct names in {root / CLASS_NAME_FILES[0]} ('<wnid> <name>' lines)"
        )
    return names


def _names_from_file(path: Path, wnids: Sequence[str], first_synonym: bool) -> list[str] | None:
    if not path.is_file():
        return None
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    pairs = [line.split(maxsplit=1) for line in lines]
    if pairs and all(len(p) == 2 and _WNID.match(p[0]) for p in pairs):
        by_wnid = {wnid: (rest.split(",")[0] if first_synonym else rest).strip() for wnid, rest in pairs}
        missing = [w for w in wnids if w not in by_wnid]
        if missing:
            raise DataError(f"{path} has no name for {len(missing)} training classes, e.g. {missing[:3]}")
        return [by_wnid[w] for w in wnids]
    if not first_synonym and len(lines) == len(wnids):
        return lines
    raise DataError(f"{path}: expected '<wnid> <name>' lines or {len(wnids)} names in class order, found {len(lines)}")


def _check_layout(root: Path, opts: ImagenetOptions) -> None:
    """Every folder the build will read, checked before listing a million files."""
    needed = [root / opts.folder("train"), root / opts.folder("val")]
    needed += [
        root / opts.folder("imagenet_c") / c / str(opts.imagenet_c_severity) for c in opts.imagenet_c_corruptions
    ]
    for shift in opts.shifts:
        needed.append(root / opts.folder(shift))
    missing = [str(p) for p in needed if not p.is_dir()]
    if "objectnet" in opts.shifts and (root / opts.folder("objectnet")).is_dir():
        on = root / opts.folder("objectnet")
        if not (on / "images").is_dir():
            missing.append(str(on / "images"))
        missing += [str(on / "mappings" / f) for f in OBJECTNET_MAPPING_FILES if not (on / "mappings" / f).is_file()]
    if missing:
        shown = "\n  ".join(missing)
        raise DataError(f"imagenet: missing under data.root {root}:\n  {shown}\n{HOW_TO_STAGE}")


# ----------------------------------------------------------------------------------------------
# Splits.
# ----------------------------------------------------------------------------------------------


def _val_split(root: Path, val_dir: Path, wnid_index: dict[str, int], class_names: list[str]) -> FileImages:
    if class_folders(val_dir):
        paths, labels = scan_class_tree(val_dir, wnid_index, what="imagenet val")
        return FileImages(paths=paths, labels=labels, class_names=class_names)
    solution = next((p for p in (root / VAL_SOLUTION_FILE, val_dir.parent / VAL_SOLUTION_FILE) if p.is_file()), None)
    if solution is None:
        raise DataError(
            f"imagenet: {val_dir} has no class subfolders and no {VAL_SOLUTION_FILE} was found beside it; put the "
            f"validation images in val/<wnid>/ folders or stage Kaggle's {VAL_SOLUTION_FILE} in {root}"
        )
    paths: list[str] = []
    labels: list[int] = []
    with open(solution, newline="") as handle:
        for row in csv.DictReader(handle):
            wnid = (row.get("PredictionString") or "").split()[:1]
            if not wnid or wnid[0] not in wnid_index:
                raise DataError(f"{solution}: row {row} names no training class")
            paths.append(str(val_dir / f"{row['ImageId']}.JPEG"))
            labels.append(wnid_index[wnid[0]])
    missing = [p for p in paths if not Path(p).is_file()]
    if missing or not paths:
        raise DataError(f"imagenet: {len(missing)} val images listed in {solution} are missing, e.g. {missing[:1]}")
    return FileImages(paths=paths, labels=np.asarray(labels), class_names=class_names)


def _imagenet_c(root: Path, opts: ImagenetOptions, wnid_index: dict[str, int], class_names: list[str]) -> FileImages:
    paths: list[str] = []
    labels: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    for group, corruption in enumerate(opts.imagenet_c_corruptions):
        folder = root / opts.folder("imagenet_c") / corruption / str(opts.imagenet_c_severity)
        found, found_labels = scan_class_tree(
            folder, wnid_index, what=f"imagenet-c {corruption}/{opts.imagenet_c_severity}"
        )
        paths.extend(found)
        labels.append(found_labels)
        groups.append(np.full(len(found), group, dtype=np.int64))
    return FileImages(
        paths=paths,
        labels=np.concatenate(labels),
        class_names=class_names,
        groups=np.concatenate(groups),
        group_names=list(opts.imagenet_c_corruptions),
    )


def _imagenet_v2(folder: Path, wnid_index: dict[str, int], class_names: list[str]) -> FileImages:
    names = class_folders(folder)
    if names and all(name.isdigit() for name in names):
        # The official ImageNetV2 archives name class folders by class index 0..999, not by WNID.
        bad = [name for name in names if int(name) >= len(class_names)]
        if bad:
            raise DataError(f"imagenet_v2: class folders {bad[:5]} in {folder} exceed the {len(class_names)} classes")
        label_of = {name: int(name) for name in names}
    else:
        label_of = wnid_index
    paths, labels = scan_class_tree(folder, label_of, what="imagenet_v2")
    return FileImages(paths=paths, labels=labels, class_names=class_names)


def _class_subset(
    folder: Path, shift: str, wnids: list[str], wnid_index: dict[str, int], class_names: list[str]
) -> tuple[FileImages, list[int] | None]:
    """A shift over a subset of the classes (ImageNet-R/-A): its classes are the WNID folders present."""
    present = class_folders(folder)
    unknown = [w for w in present if w not in wnid_index]
    if unknown:
        raise DataError(f"{shift}: folders {unknown[:5]} in {folder} are not training classes (WNIDs expected)")
    if not present:
        raise DataError(f"{shift}: {folder} has no class folders")
    indices = [wnid_index[w] for w in present]
    if len(present) == len(wnids):
        paths, labels = scan_class_tree(folder, wnid_index, what=shift)
        return FileImages(paths=paths, labels=labels, class_names=class_names), None
    paths, labels = scan_class_tree(folder, {w: k for k, w in enumerate(present)}, what=shift)
    return FileImages(paths=paths, labels=labels, class_names=[class_names[i] for i in indices]), indices


def objectnet_groups(mappings: Path, num_classes: int) -> dict[str, tuple[str, list[int]]]:
    """ObjectNet folder -> (ObjectNet label, ImageNet class indices), from the release's ``mappings/``.

    The chain is the release's own: folder -> ObjectNet label (``folder_to_objectnet_label.json``) ->
    ImageNet names joined by "; " (``objectnet_to_imagenet_1k.json``) -> line of that name in
    ``imagenet_to_label_2012_v2`` -> torchvision index (``pytorch_to_imagenet_2012_id.json`` maps
    index -> line), and the torchvision index IS our class index (sorted WNIDs).
    """
    try:
        folder_to_label = json.loads((mappings / "folder_to_objectnet_label.json").read_text())
        label_to_names = json.loads((mappings / "objectnet_to_imagenet_1k.json").read_text())
        index_to_line = json.loads((mappings / "pytorch_to_imagenet_2012_id.json").read_text())
        lines = [line.strip() for line in (mappings / "imagenet_to_label_2012_v2").read_text().splitlines()]
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"objectnet: cannot read the mapping files in {mappings}: {error}") from None
    name_to_index: dict[str, int] = {}
    for index, line in index_to_line.items():
        if not isinstance(line, int) or not 0 <= line < len(lines):
            raise DataError(f"{mappings / 'pytorch_to_imagenet_2012_id.json'}: bad line number {line!r}")
        name = lines[line]
        if name in name_to_index:
            # Ambiguous ImageNet names: the reference evaluations keep the last, so do we.
            log.warning("objectnet mapping: ImageNet name %r names two classes; using index %s", name, index)
        name_to_index[name] = int(index)
    label_to_folder = {label: folder for folder, label in folder_to_label.items()}
    groups: dict[str, tuple[str, list[int]]] = {}
    for label, joined in label_to_names.items():
        if label not in label_to_folder:
            raise DataError(f"objectnet mapping: label {label!r} has no folder in folder_to_objectnet_label.json")
        members = []
        for name in joined.split("; "):
            if name not in name_to_index:
                raise DataError(f"objectnet mapping: ImageNet name {name!r} is not in imagenet_to_label_2012_v2")
            members.append(name_to_index[name])
        bad = [m for m in members if m >= num_classes]
        if bad:
            raise DataError(
                f"objectnet mapping refers to ImageNet class {bad[0]} but the training set has {num_classes} classes"
            )
        groups[label_to_folder[label]] = (label, sorted(set(members)))
    return groups


def _objectnet(folder: Path, num_classes: int) -> tuple[FileImages, list[list[int]]]:
    groups = objectnet_groups(folder / "mappings", num_classes)
    present = [name for name in class_folders(folder / "images") if name in groups]
    if not present:
        raise DataError(f"objectnet: none of the folders in {folder / 'images'} maps to ImageNet classes")
    paths, labels = scan_class_tree(
        folder / "images", {name: k for k, name in enumerate(present)}, what="objectnet", allow_unknown=True
    )
    class_names = [groups[name][0] for name in present]
    return FileImages(paths=paths, labels=labels, class_names=class_names), [groups[name][1] for name in present]


# ----------------------------------------------------------------------------------------------
# Builder.
# ----------------------------------------------------------------------------------------------


def build_imagenet(config: AutoFTConfig, out_dir: Path) -> DatasetSplits:
    opts = config.data.options
    assert isinstance(opts, ImagenetOptions)  # the schema picks the options model by dataset
    data_root = resolve_root(config.data.root, "imagenet", HOW_TO_STAGE)
    root = data_root.local
    out_dir = Path(out_dir)

    def save(name: str, images: FileImages, **fields: Any) -> None:
        save_file_split(out_dir, name, images, root=data_root, **fields)

    _check_layout(root, opts)
    wnids = class_folders(root / opts.folder("train"))
    if not wnids:
        raise DataError(f"imagenet: {root / opts.folder('train')} has no class folders (train/<wnid>/<image>)")
    wnid_index = {w: i for i, w in enumerate(wnids)}
    class_names = imagenet_class_names(root, wnids)

    paths, labels = scan_class_tree(root / opts.folder("train"), wnid_index, what="imagenet train")
    train = FileImages(paths=paths, labels=labels, class_names=class_names)
    kept, held_out = stratified_holdout(train.labels, opts.id_val_fraction, opts.split_seed)
    save("id_train", subset_files(train, kept))
    save("id_val", subset_files(train, held_out), held_out_of="train", split_seed=opts.split_seed)
    save("id_test", _val_split(root, root / opts.folder("val"), wnid_index, class_names))
    save(
        "ood_val_source",
        _imagenet_c(root, opts, wnid_index, class_names),
        corruptions=opts.imagenet_c_corruptions,
        severity=opts.imagenet_c_severity,
    )
    for shift in opts.shifts:
        folder = root / opts.folder(shift)
        if shift == "imagenet_v2":
            save(shift, _imagenet_v2(folder, wnid_index, class_names))
        elif shift in ("imagenet_r", "imagenet_a"):
            images, indices = _class_subset(folder, shift, wnids, wnid_index, class_names)
            projection = {} if indices is None else {"logit_indices": indices}
            save(shift, images, **projection)
        elif shift == "imagenet_sketch":
            paths, labels = scan_class_tree(folder, wnid_index, what="imagenet_sketch")
            save(shift, FileImages(paths=paths, labels=labels, class_names=class_names))
        else:
            images, groups = _objectnet(folder, len(wnids))
            save_cropped_split(out_dir, shift, images, opts.objectnet_border_px, root=data_root, logit_groups=groups)
    manifests = {name: f"{name}.json" for name in ("id_train", "id_val", "id_test", "ood_val_source", *opts.shifts)}
    return DatasetSplits(
        dataset="imagenet",
        class_names=class_names,
        templates=templates_for("imagenet"),
        manifests=manifests,
        ood_val_set=f"imagenet_c_severity{opts.imagenet_c_severity}",
        ood_tests=list(opts.shifts),
        extra={"wnids": wnids},
    )
