"""Pods share nothing but artifacts and buckets: data prepared from a gs:// root in one "pod" must load in
another whose disk holds none of it, staging only the files that step needs.

Each pod is a separate AUTOFT_CACHE folder; data lives in a real fake-gcs-server reached through the real
google-cloud-storage client. Before the fix, manifests recorded the preparing pod's staging path, so the
second pod could not read a single image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from autoft.config import resolve_config
from autoft.contracts import PreparedData
from autoft.data.manifests import load_split
from autoft.stages import stage_prepare
from autoft.storage import staging_folder, upload_folder
from fakes import write_image
from fakes.cifar import make_fake_cifar
from fakes.wilds import make_fake_iwildcam

if TYPE_CHECKING:
    from conftest_servers import GcsEmulator

pytest_plugins = ["conftest_servers"]

CLASSES = ["cat", "dog", "red fox"]


def become_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> Path:
    """A fresh machine: its own empty cache (where gs:// data is staged)."""
    cache = tmp_path / f"pod-{name}"
    monkeypatch.setenv("AUTOFT_CACHE", str(cache))
    return cache


def staged_files(root_uri: str) -> set[str]:
    folder = staging_folder(root_uri)
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")}


def assert_no_local_paths(prepared: Path, *forbidden: Path) -> None:
    """Nothing the prepare step wrote names a path on its own disk (or the source folder)."""
    for path in prepared.rglob("*"):
        if path.suffix in (".json", ".csv"):
            text = path.read_text()
            for folder in forbidden:
                assert str(folder) not in text, f"{path.name} records {folder}"


def test_a_folder_dataset_prepared_in_one_pod_loads_in_another(
    gcs: GcsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    for k, name in enumerate(CLASSES):
        for split in ("train", "val", "test", "ood_val", "sketch"):
            for i in range(3):
                write_image(source / split / name / f"{i}.png", seed=100 * k + i, fmt="PNG")
    root_uri = f"gs://{gcs.new_bucket()}/folder-data"
    upload_folder(source, root_uri)

    pod_a = become_pod(monkeypatch, tmp_path, "prepare")
    config = resolve_config(overrides=["data.dataset=folder", f"data.root={root_uri}", "data.ood_val.size=3"])
    stage_prepare(config, tmp_path / "artifact")
    assert_no_local_paths(tmp_path / "artifact", pod_a, source)
    manifest = json.loads((tmp_path / "artifact" / "sketch.json").read_text())
    assert manifest["root"] == root_uri

    become_pod(monkeypatch, tmp_path, "evaluate")  # a second pod: nothing of the data on its disk
    prepared = PreparedData.load_from(tmp_path / "artifact")
    sketch = load_split(prepared.manifest("sketch"))
    assert staged_files(root_uri) == {f"sketch/{c}/{i}.png" for c in CLASSES for i in range(3)}  # its split only
    assert [CLASSES[y] for y in sketch.labels] == [Path(p).parent.name for p in sketch.paths]
    assert np.asarray(sketch.image(4)).shape == (8, 8, 3)
    become_pod(monkeypatch, tmp_path, "search")
    ood_val = load_split(prepared.manifest("ood_val"))  # a subset manifest keeps the root; only its rows staged
    assert len(ood_val) == 3 and len(staged_files(root_uri)) == 3
    assert all(np.asarray(ood_val.image(i)).shape == (8, 8, 3) for i in range(3))


def test_wilds_from_a_bucket_stages_metadata_and_one_split_per_pod(
    gcs: GcsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_fake_iwildcam(tmp_path / "wilds", per_split=6)
    root_uri = f"gs://{gcs.new_bucket()}/wilds"
    upload_folder(source, root_uri)
    pod_a = become_pod(monkeypatch, tmp_path, "prepare")
    config = resolve_config(preset="iwildcam", overrides=[f"data.root={root_uri}", "data.ood_val.size=4"])
    stage_prepare(config, tmp_path / "artifact")
    assert_no_local_paths(tmp_path / "artifact", pod_a, source)
    local_labels = load_split(tmp_path / "artifact" / "id_val.json").labels.tolist()

    become_pod(monkeypatch, tmp_path, "finetune")
    id_val = load_split(tmp_path / "artifact" / "id_val.json")
    assert id_val.labels.tolist() == local_labels
    staged = staged_files(root_uri)
    images = {f for f in staged if f.startswith("iwildcam_v2.0/train/")}
    assert len(images) == len(id_val)  # the id_val images, nothing of train/test
    assert {"iwildcam_v2.0/metadata.csv", "iwildcam_v2.0/RELEASE_v2.0.txt"} <= staged
    assert np.asarray(id_val.image(0)).ndim == 3
    become_pod(monkeypatch, tmp_path, "search")
    ood_val = load_split(tmp_path / "artifact" / "ood_val.json")  # the OOD-val subset: only its 4 images
    assert len(ood_val) == 4
    assert len([f for f in staged_files(root_uri) if f.startswith("iwildcam_v2.0/train/")]) == 4


def test_cifar_arrays_from_a_bucket_load_in_another_pod(
    gcs: GcsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_fake_cifar(tmp_path / "cifar", per_batch=10, per_severity=5, corruptions=("fog", "snow"))
    root_uri = f"gs://{gcs.new_bucket()}/cifar"
    upload_folder(tmp_path / "cifar", root_uri)
    pod_a = become_pod(monkeypatch, tmp_path, "prepare")
    overrides = [f"data.root={root_uri}", "data.options.cifar10c_corruptions=[fog, snow]", "data.ood_val.size=4"]
    stage_prepare(resolve_config(preset="cifar10", overrides=overrides), tmp_path / "artifact")
    assert_no_local_paths(tmp_path / "artifact", pod_a, tmp_path / "cifar")
    expected = load_split(tmp_path / "artifact" / "cifar10_1.json")

    become_pod(monkeypatch, tmp_path, "evaluate")
    shift = load_split(tmp_path / "artifact" / "cifar10_1.json")
    assert np.array_equal(np.asarray(shift.image(3)), np.asarray(expected.image(3)))
    assert all(f.startswith("CIFAR-10.1/") for f in staged_files(root_uri))  # not the training batches
