"""Which code builds each dataset and reads each split-manifest format: a static name -> function map.

A leaf: it imports nothing from the project but the errors, so the config schema can check a dataset
name without importing any dataset module, and a dataset module (which may pull in pandas or wilds)
is imported only when its builder or its manifest format is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from autoft.errors import DataError

# dataset name -> "module:builder"; a builder is ``(config, out_dir) -> DatasetSplits``.
DATASETS: dict[str, str] = {
    "digits": "autoft.data.ds_digits:build_digits",
    "cifar10": "autoft.data.ds_cifar:build_cifar10",
    "imagenet": "autoft.data.ds_imagenet:build_imagenet",
    "iwildcam": "autoft.data.ds_wilds:build_iwildcam",
    "fmow": "autoft.data.ds_wilds:build_fmow",
    "folder": "autoft.data.ds_generic:build_folder",
    "csv": "autoft.data.ds_generic:build_csv",
}
# Manifest formats a dataset module defines -> "module:loader"; a loader is ``(manifest, base_folder) -> images``.
# The built-in formats (npz, files) live in autoft.data.manifests itself.
FORMATS: dict[str, str] = {
    "wilds": "autoft.data.ds_wilds:load_wilds_manifest",
    "cropped_files": "autoft.data.ds_imagenet:load_cropped_manifest",
    "npy_rows": "autoft.data.ds_cifar:load_npy_rows_manifest",
}


def known_datasets() -> list[str]:
    return sorted(DATASETS)


def _resolve(target: str) -> Callable[..., Any]:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def get_builder(name: str) -> Callable[..., Any]:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {known_datasets()}")
    return _resolve(DATASETS[name])


def get_format_loader(fmt: str) -> Callable[..., Any] | None:
    """The loader of a format a dataset module defines, or None when no module defines it."""
    return _resolve(FORMATS[fmt]) if fmt in FORMATS else None
