"""The CIFAR-10 family: CIFAR-10 (python batches), CIFAR-10-C, CIFAR-10.1 and CIFAR-10.2.

- CIFAR-10's "python version" is a set of pickles (dicts of a uint8 array, label lists and names).
  Unpickling runs whatever the file says, so they are read with a restricted unpickler that resolves
  only the few globals a numpy array needs; anything else (``os.system`` ...) is refused.
- ID: ``train`` minus a stratified, seeded held-out ID-val; ``test_batch`` is the ID test.
- CIFAR-10-C (OOD-val source): ``<corruption>.npy`` holds severities 1..5 stacked, 10,000 rows each, with
  one ``labels.npy``; severity s is rows ``[n*(s-1), n*s)`` with ``n = len(labels) / 5``. Those arrays are
  never copied: the ``npy_rows`` manifest names the files and row ranges and reads them memory-mapped.
- OOD tests: CIFAR-10.1 (``cifar10.1_<version>_{data,labels}.npy``, memory-mapped too) and CIFAR-10.2
  (``cifar102_test.npz``, copied into the prepared folder since an npz cannot be memory-mapped).
"""

from __future__ import annotations

import codecs
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy._core import multiarray

from autoft.data.ds_generic import stratified_holdout
from autoft.data.images import NO_GROUP, ArrayImages, LabeledImages
from autoft.data.manifests import DatasetSplits, save_array_split, write_manifest
from autoft.data.options import CifarOptions
from autoft.data.roots import DataRoot, resolve_root
from autoft.data.templates import templates_for
from autoft.errors import DataError

if TYPE_CHECKING:
    from autoft.config import AutoFTConfig

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SEVERITIES = 5
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR102_FILE = "cifar102_test.npz"
NPY_ROWS_FORMAT = "npy_rows"

HOW_TO_STAGE = (
    "Stage the folders from a bucket, e.g. `gcloud storage cp -r gs://BUCKET/cifar DATA_ROOT` (or `gsutil -m cp -r "
    "...`), and set data.root=DATA_ROOT, or set data.root=gs://BUCKET/cifar to stage automatically; drop shifts you "
    "do not have from data.options.shifts and rename folders with data.options.dirs. See docs/datasets.md."
)


# ----------------------------------------------------------------------------------------------
# Safe reading of the CIFAR-10 python batches.
# ----------------------------------------------------------------------------------------------


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only what pickled numpy arrays need; CIFAR batches were written by Python 2 numpy
    (``numpy.core.multiarray._reconstruct``); Python 3 protocol-2 pickles also use ``_codecs.encode``
    to rebuild bytes, which only encodes a string."""

    ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: a CIFAR-10 batch never needs it")
        return self.ALLOWED[(module, name)]


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with str keys; any problem is a DataError naming the file."""
    try:
        with open(path, "rb") as handle:
            # latin1: the Python 2 byte strings inside become str, the way numpy documents for old pickles.
            payload = RestrictedUnpickler(handle, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise DataError(f"cifar10: cannot read {path} as a CIFAR-10 python batch: {error}") from None
    if not isinstance(payload, dict):
        raise DataError(f"cifar10: {path} holds a {type(payload).__name__}, not a CIFAR-10 batch dict")
    return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in payload.items()}


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 32, 32, 3] and labels [N] from one batch file."""
    batch = read_cifar_pickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = getattr(data, "shape", type(data).__name__)
        raise DataError(f"cifar10: {path}: 'data' must be a uint8 array [N, 3072], got {found}")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(isinstance(v, int) for v in labels):
        raise DataError(f"cifar10: {path}: 'labels' must be a list of {len(data)} integers")
    # Rows are channel-major (1024 red, 1024 green, 1024 blue values): to [N, 32, 32, 3].
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64)


def cifar10_class_names(folder: Path) -> list[str]:
    meta = folder / "batches.meta"
    if not meta.is_file():
        return list(CIFAR10_CLASSES)
    names = read_cifar_pickle(meta).get("label_names")
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, str) for n in names):
        raise DataError(f"cifar10: {meta}: 'label_names' must list the 10 class names")
    return names


# ----------------------------------------------------------------------------------------------
# Memory-mapped .npy row ranges as a split.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NpyPart:
    images: str  # .npy of uint8 [N, H, W, 3]
    labels: str  # .npy of integer labels [N]
    start: int
    stop: int
    group: int = NO_GROUP


class NpyRowsImages(LabeledImages):
    """Rows of .npy files read through memory maps: nothing is loaded until an image is asked for.

    Picklable for DataLoader workers: the memory maps are dropped on pickling and reopened lazily.
    """

    def __init__(self, parts: list[NpyPart], class_names: list[str], group_names: list[str]) -> None:
        self.parts = parts
        self.class_names = list(class_names)
        self.group_names = list(group_names)
        self.offsets = np.cumsum([0] + [p.stop - p.start for p in parts])
        labels, groups = [], []
        for part in parts:
            part_labels = np.load(part.labels, mmap_mode="r", allow_pickle=False)
            labels.append(np.asarray(part_labels[part.start : part.stop], dtype=np.int64))
            groups.append(np.full(part.stop - part.start, part.group, dtype=np.int64))
        self.labels = np.concatenate(labels)
        self.groups = np.concatenate(groups)
        self._arrays: dict[int, np.ndarray] = {}
        self._check()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}

    def native_shape(self) -> tuple[int, int] | None:
        shapes = {np.load(part.images, mmap_mode="r", allow_pickle=False).shape[1:3] for part in self.parts}
        if len(shapes) != 1:
            return None
        height, width = shapes.pop()
        return int(height), int(width)

    def image(self, index: int) -> np.ndarray:
        part_index = int(np.searchsorted(self.offsets, index, side="right")) - 1
        if index < 0 or part_index >= len(self.parts):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        if part_index not in self._arrays:
            self._arrays[part_index] = np.load(self.parts[part_index].images, mmap_mode="r", allow_pickle=False)
        row = self.parts[part_index].start + index - int(self.offsets[part_index])
        return np.array(self._arrays[part_index][row])  # a copy: the map stays read-only and shareable


def check_npy_pair(images_path: Path, labels_path: Path, what: str) -> int:
    """Validate an images/labels .npy pair without loading it; returns the row count."""
    for path in (images_path, labels_path):
        if not path.is_file():
            raise DataError(f"{what}: {path} not found. {HOW_TO_STAGE}")
    try:
        images = np.load(images_path, mmap_mode="r", allow_pickle=False)
        labels = np.load(labels_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{what}: cannot read {images_path} / {labels_path} as .npy arrays: {error}") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{what}: {images_path} must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{what}: {labels_path} must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{what}: {len(images)} images in {images_path} but {len(labels)} labels in {labels_path}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise DataError(f"{what}: labels in {labels_path} outside 0..9")
    return len(labels)


def save_npy_rows_split(
    folder: Path,
    name: str,
    parts: list[NpyPart],
    class_names: list[str],
    group_names: list[str],
    root: DataRoot,
    **fields: Any,
) -> Path:
    """The manifest of rows of the dataset's own .npy files, named relative to its ``root``."""
    images = NpyRowsImages(parts, class_names, group_names)  # validates labels before the manifest exists
    what = f"split {name!r}"
    relative = [
        NpyPart(root.relative(p.images, what), root.relative(p.labels, what), p.start, p.stop, p.group) for p in parts
    ]
    return write_manifest(
        Path(folder) / f"{name}.json",
        name,
        NPY_ROWS_FORMAT,
        class_names,
        root=root.uri,
        parts=[vars(p) for p in relative],
        num_examples=len(images),
        group_names=group_names,
        **fields,
    )


def load_npy_rows_manifest(manifest: dict[str, Any], base: Path) -> LabeledImages:
    raw_parts = [NpyPart(**raw) for raw in manifest["parts"]]
    if manifest.get("root"):  # the dataset's files, staged to this pod when the root is on gs://
        files = sorted({path for part in raw_parts for path in (part.images, part.labels)})
        local = dict(zip(files, DataRoot.of(manifest["root"]).localize(files), strict=True))
    else:  # relative to the manifest's folder, like the built-in formats
        local = {path: str(base / path) for part in raw_parts for path in (part.images, part.labels)}
    parts = []
    for part in raw_parts:
        part = NpyPart(local[part.images], local[part.labels], part.start, part.stop, part.group)
        for path in (part.images, part.labels):
            if not Path(path).is_file():
                raise DataError(f"array file {path} named by manifest {manifest['name']!r} is missing")
        parts.append(part)
    return NpyRowsImages(parts, manifest["class_names"], manifest.get("group_names", []))


# ----------------------------------------------------------------------------------------------
# Builder.
# ----------------------------------------------------------------------------------------------


def _check_layout(root: Path, opts: CifarOptions) -> None:
    needed = [root / opts.folder("cifar10") / name for name in (*TRAIN_BATCHES, "test_batch")]
    needed += [root / opts.folder("cifar10_c") / f"{c}.npy" for c in opts.cifar10c_corruptions]
    needed.append(root / opts.folder("cifar10_c") / "labels.npy")
    if "cifar10_1" in opts.shifts:
        stem = f"cifar10.1_{opts.cifar101_version}"
        needed += [
            root / opts.folder("cifar10_1") / f"{stem}_data.npy",
            root / opts.folder("cifar10_1") / f"{stem}_labels.npy",
        ]
    if "cifar10_2" in opts.shifts:
        needed.append(root / opts.folder("cifar10_2") / CIFAR102_FILE)
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        shown = "\n  ".join(missing)
        raise DataError(f"cifar10: missing under data.root {root}:\n  {shown}\n{HOW_TO_STAGE}")


def _cifar10c_parts(root: Path, opts: CifarOptions) -> list[NpyPart]:
    folder = root / opts.folder("cifar10_c")
    parts = []
    for group, corruption in enumerate(opts.cifar10c_corruptions):
        rows = check_npy_pair(folder / f"{corruption}.npy", folder / "labels.npy", f"CIFAR-10-C {corruption}")
        if rows == 0 or rows % SEVERITIES:
            raise DataError(f"CIFAR-10-C: {folder / corruption}.npy has {rows} rows, not {SEVERITIES} equal severities")
        per_severity = rows // SEVERITIES
        start = per_severity * (opts.cifar10c_severity - 1)
        parts.append(
            NpyPart(str(folder / f"{corruption}.npy"), str(folder / "labels.npy"), start, start + per_severity, group)
        )
    return parts


def _cifar102(path: Path, class_names: list[str]) -> ArrayImages:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            key = "images" if "images" in arrays.files else "data"
            if key not in arrays.files or "labels" not in arrays.files:
                raise DataError(f"CIFAR-10.2: {path} needs arrays 'images' and 'labels'; has {arrays.files}")
            images, labels = arrays[key], arrays["labels"]
    except (OSError, ValueError) as error:
        raise DataError(f"CIFAR-10.2: cannot read {path}: {error}") from None
    return ArrayImages(images=np.ascontiguousarray(images), labels=labels, class_names=class_names)


def build_cifar10(config: AutoFTConfig, out_dir: Path) -> DatasetSplits:
    opts = config.data.options
    assert isinstance(opts, CifarOptions)  # the schema picks the options model by dataset
    data_root = resolve_root(config.data.root, "cifar10", HOW_TO_STAGE)
    root = data_root.local
    _check_layout(root, opts)
    out_dir = Path(out_dir)
    batches = root / opts.folder("cifar10")
    class_names = cifar10_class_names(batches)

    # Validate every source before writing anything, so a bad file fails before minutes of copying.
    train_parts = [read_cifar_batch(batches / name) for name in TRAIN_BATCHES]
    train = ArrayImages(
        images=np.concatenate([images for images, _ in train_parts]),
        labels=np.concatenate([labels for _, labels in train_parts]),
        class_names=class_names,
    )
    test_images, test_labels = read_cifar_batch(batches / "test_batch")
    test = ArrayImages(images=test_images, labels=test_labels, class_names=class_names)
    c_parts = _cifar10c_parts(root, opts)
    shift_parts: dict[str, list[NpyPart] | ArrayImages] = {}
    if "cifar10_1" in opts.shifts:
        stem = root / opts.folder("cifar10_1") / f"cifar10.1_{opts.cifar101_version}"
        rows = check_npy_pair(Path(f"{stem}_data.npy"), Path(f"{stem}_labels.npy"), "CIFAR-10.1")
        shift_parts["cifar10_1"] = [NpyPart(f"{stem}_data.npy", f"{stem}_labels.npy", 0, rows)]
    if "cifar10_2" in opts.shifts:
        shift_parts["cifar10_2"] = _cifar102(root / opts.folder("cifar10_2") / CIFAR102_FILE, class_names)

    kept, held_out = stratified_holdout(train.labels, opts.id_val_fraction, opts.split_seed)
    save_array_split(out_dir, "id_train", ArrayImages(train.images[kept], train.labels[kept], class_names))
    id_val = ArrayImages(train.images[held_out], train.labels[held_out], class_names)
    save_array_split(out_dir, "id_val", id_val, split_seed=opts.split_seed)
    save_array_split(out_dir, "id_test", test)
    save_npy_rows_split(
        out_dir,
        "ood_val_source",
        c_parts,
        class_names,
        list(opts.cifar10c_corruptions),
        data_root,
        severity=opts.cifar10c_severity,
    )
    for shift in opts.shifts:
        source = shift_parts[shift]
        if isinstance(source, ArrayImages):
            save_array_split(out_dir, shift, source)
        else:
            save_npy_rows_split(out_dir, shift, source, class_names, [], data_root)
    manifests = {name: f"{name}.json" for name in ("id_train", "id_val", "id_test", "ood_val_source", *opts.shifts)}
    return DatasetSplits(
        dataset="cifar10",
        class_names=class_names,
        templates=templates_for("cifar10"),
        manifests=manifests,
        ood_val_set=f"cifar10_c_severity{opts.cifar10c_severity}",
        ood_tests=list(opts.shifts),
    )
