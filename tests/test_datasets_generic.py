"""Generic image-folder and CSV datasets, user eval sets mapped by class name, and shared helpers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from autoft.config import resolve_config
from autoft.data.ds_generic import build_csv, build_folder, load_eval_set, stratified_holdout
from autoft.data.images import NO_GROUP, FileImages
from autoft.data.manifests import load_split
from autoft.errors import ConfigError, DataError
from fakes import write_image

CLASSES = ["cat", "dog", "red fox"]


def _tree(root: Path, classes: list[str], per_class: int = 2, seed: int = 0) -> Path:
    for k, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{i}.png", seed=seed + 10 * k + i, fmt="PNG")
    return root


def _config(dataset: str, root: Path):
    return resolve_config(overrides=[f"data.dataset={dataset}", f"data.root={root}"])


def _write_csv(path: Path, rows: list[tuple], header: tuple = ("path", "label", "group")) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_folder_dataset_with_an_extra_shift(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for split in ("train", "val", "test", "ood_val"):
        _tree(root / split, CLASSES)
    _tree(root / "sketches", ["red fox", "cat"])  # a shift over a subset of the classes
    splits = build_folder(_config("folder", root), tmp_path / "out")
    splits.check()
    assert splits.class_names == CLASSES and splits.ood_tests == ["sketches"]
    sketches = load_split(tmp_path / "out" / splits.manifests["sketches"])
    assert [CLASSES[y] for y in sketches.labels] == [Path(p).parent.name for p in sketches.paths]
    assert sketches.image(0).size == (8, 8)


def test_folder_dataset_errors(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _tree(root / "train", CLASSES)
    with pytest.raises(DataError, match=r"missing split folders \['val', 'test', 'ood_val'\]"):
        build_folder(_config("folder", root), tmp_path / "out")
    for split in ("val", "test", "ood_val"):
        _tree(root / split, CLASSES)
    _tree(root / "ood_val", ["wolf"])
    with pytest.raises(DataError, match="'wolf'"):
        build_folder(_config("folder", root), tmp_path / "out")
    with pytest.raises(ConfigError, match=r"data\.root is empty"):
        build_folder(resolve_config(overrides=["data.dataset=folder"]), tmp_path / "out")


def test_csv_dataset_with_groups_and_class_file(tmp_path: Path) -> None:
    root = tmp_path / "csvdata"
    images = _tree(root / "images", CLASSES, per_class=3)
    rows = [(f"images/{name}/{i}.png", name, ["day", "night"][i % 2]) for name in CLASSES for i in range(3)]
    for split in ("train", "val", "test", "ood_val", "ood_rain"):
        _write_csv(root / f"{split}.csv", rows)
    (root / "classes.txt").write_text("red fox\ndog\ncat\n")  # the model's class order
    splits = build_csv(_config("csv", root), tmp_path / "out")
    assert splits.class_names == ["red fox", "dog", "cat"] and splits.ood_tests == ["ood_rain"]
    train = load_split(tmp_path / "out" / splits.manifests["id_train"])
    assert [splits.class_names[y] for y in train.labels] == [r[1] for r in rows]
    assert train.group_names == ["day", "night"] and train.groups.tolist() == [i % 2 for _ in CLASSES for i in range(3)]
    assert train.paths[0] == str((images / "cat" / "0.png").resolve())


def test_eval_set_folder_maps_names_to_the_model_order(tmp_path: Path) -> None:
    root = _tree(tmp_path / "shift", ["red_fox", "Cat"])  # loose matching: case and '_' for ' '
    images = load_eval_set("folder", root, CLASSES)
    assert isinstance(images, FileImages)
    assert images.class_names == CLASSES
    assert images.labels.tolist() == [0, 0, 2, 2]  # folders sort as "Cat", "red_fox"
    assert (images.groups == NO_GROUP).all()
    _tree(root, ["wolf", "bear"])
    with pytest.raises(DataError, match=r"2 class names are not classes of the model \('bear', 'wolf'\)"):
        load_eval_set("folder", root, CLASSES)


def test_eval_set_csv(tmp_path: Path) -> None:
    _tree(tmp_path / "img", CLASSES, per_class=1)
    good = _write_csv(tmp_path / "set.csv", [("img/dog/0.png", "dog", ""), ("img/cat/0.png", "cat", "")])
    images = load_eval_set("csv", good, CLASSES)
    assert images.labels.tolist() == [1, 0] and images.group_names == []
    unknown = _write_csv(tmp_path / "unknown.csv", [("img/dog/0.png", "wolf")], header=("path", "label"))
    with pytest.raises(DataError, match="'wolf'"):
        load_eval_set("csv", unknown, CLASSES)
    missing = _write_csv(tmp_path / "missing.csv", [("img/dog/9.png", "dog")], header=("path", "label"))
    with pytest.raises(DataError, match=r"do not exist.*9\.png"):
        load_eval_set("csv", missing, CLASSES)
    headless = _write_csv(tmp_path / "headless.csv", [("img/dog/0.png", "dog")], header=("file", "class"))
    with pytest.raises(DataError, match="header with columns path,label"):
        load_eval_set("csv", headless, CLASSES)
    with pytest.raises(DataError, match="not found"):
        load_eval_set("csv", tmp_path / "nope.csv", CLASSES)
    with pytest.raises(ConfigError, match="'folder' or 'csv'"):
        load_eval_set("parquet", good, CLASSES)


def test_eval_set_from_gs_is_staged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import autoft.storage

    root = _tree(tmp_path / "staged", ["dog"])
    monkeypatch.setattr(autoft.storage, "stage_to_local", lambda uri, *a, **k: root, raising=False)
    assert load_eval_set("folder", "gs://bucket/shift", CLASSES).labels.tolist() == [1, 1]


def test_stratified_holdout_is_seeded_and_covers_every_class() -> None:
    labels = np.repeat(np.arange(5), [10, 10, 3, 2, 40])
    kept, held = stratified_holdout(labels, 0.1, seed=3)
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(len(labels)))
    assert set(labels[held].tolist()) == set(range(5))
    assert np.bincount(labels[held]).tolist() == [1, 1, 1, 1, 4]
    assert np.array_equal(held, stratified_holdout(labels, 0.1, seed=3)[1])
    assert not np.array_equal(held, stratified_holdout(labels, 0.1, seed=4)[1])
    with pytest.raises(DataError, match="two per class"):
        stratified_holdout(np.arange(4), 0.5, seed=0)
