"""Dataset builders by name, and the prepared-data index that later stages read.

A builder turns a config into split manifests on disk: ``id_train``, ``id_val``, ``id_test``, the
``ood_val_source`` from which the search's OOD-val subset is drawn, and one manifest per OOD test
shift. The prepare stage then draws the OOD-val subset and writes ``data.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoft.config import AutoFTConfig
from autoft.data.base import DataError
from autoft.storage import atomic_write_text

DATA_SCHEMA = "autoft.data/v1"
REQUIRED_SPLITS = ("id_train", "id_val", "id_test", "ood_val_source")
DATA_INDEX = "data.json"


@dataclass
class DatasetSplits:
    """What a builder produced; manifest paths are relative to the prepared-data folder."""

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


Builder = Callable[[AutoFTConfig, Path], DatasetSplits]
_BUILDERS: dict[str, Builder] = {}


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    def decorator(builder: Builder) -> Builder:
        _BUILDERS[name] = builder
        return builder

    return decorator


def get_builder(name: str) -> Builder:
    _import_builtin_builders()
    if name not in _BUILDERS:
        raise DataError(f"unknown dataset {name!r}; known: {sorted(_BUILDERS)}")
    return _BUILDERS[name]


def known_datasets() -> list[str]:
    _import_builtin_builders()
    return sorted(_BUILDERS)


def _import_builtin_builders() -> None:
    # Builders register on import; importing here keeps heavy optional imports (wilds) lazy.
    import importlib
    import pkgutil

    import autoft.data as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name.startswith("ds_"):
            importlib.import_module(f"autoft.data.{module.name}")


@dataclass
class PreparedData:
    """The ``data.json`` index: everything later stages need to find the splits."""

    folder: Path
    dataset: str
    class_names: list[str]
    templates: list[str]
    splits: dict[str, str]
    ood_val_set: str
    ood_tests: list[str]
    ood_val_indices_hash: str
    extra: dict[str, Any] = field(default_factory=dict)

    def manifest(self, split: str) -> Path:
        if split not in self.splits:
            raise DataError(f"no split {split!r} in {self.folder / DATA_INDEX}; have {sorted(self.splits)}")
        return self.folder / self.splits[split]

    def save(self) -> Path:
        payload = {"schema": DATA_SCHEMA, **{k: v for k, v in asdict(self).items() if k != "folder"}}
        return atomic_write_text(self.folder / DATA_INDEX, json.dumps(payload, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> PreparedData:
        folder = Path(folder)
        path = folder / DATA_INDEX
        if not path.is_file():
            raise DataError(f"no {DATA_INDEX} in {folder}: run `autoft prepare` (or the prepare step) first")
        payload = json.loads(path.read_text())
        if payload.pop("schema", None) != DATA_SCHEMA:
            raise DataError(f"{path}: not an {DATA_SCHEMA} index")
        return cls(folder=folder, **payload)
