"""CIFAR-10 family on fake copies: safe unpickling of Python 2 batches, the CIFAR-10-C severity rows,
CIFAR-10.1/10.2 labels, memory-mapped splits, and clear errors."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from autoft.config import resolve_config
from autoft.data.ds_cifar import NpyRowsImages, build_cifar10, read_cifar_batch, read_cifar_pickle
from autoft.data.manifests import load_split, read_manifest
from autoft.errors import ConfigError, DataError
from fakes.cifar import CLASSES, make_fake_cifar

PRESETS = Path(__file__).resolve().parents[1] / "src" / "autoft" / "presets"


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory):
    return make_fake_cifar(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="module")
def built(fake, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("cifar_out")
    config = resolve_config(preset="cifar10", overrides=[f"data.root={fake.root}"])
    return build_cifar10(config, out), out


def _build(root: Path, out: Path, *overrides: str):
    return build_cifar10(resolve_config(preset="cifar10", overrides=[f"data.root={root}", *overrides]), out)


def _check_encoding(images, labels: np.ndarray) -> None:
    """Fake images carry red = 20 * label across the whole image (checks the HWC transposition)."""
    for i in range(len(labels)):
        image = np.asarray(images.image(i))
        assert image.shape == (32, 32, 3)
        assert (image[..., 0] == 20 * labels[i]).all()


def test_python2_batches_load_with_labels_and_hwc_layout(fake) -> None:
    images, labels = read_cifar_batch(fake.root / "cifar-10-batches-py" / "data_batch_2")
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == fake.train_labels[20:40].tolist()
    assert (images[..., 0] == (20 * labels)[:, None, None]).all()
    assert (images[..., 1] == (20 + np.arange(20))[:, None, None]).all()  # row order kept
    assert read_cifar_pickle(fake.root / "cifar-10-batches-py" / "batches.meta")["label_names"] == CLASSES


def test_builder_splits_and_labels(built, fake) -> None:
    splits, out = built
    splits.check()
    assert splits.class_names == CLASSES and splits.templates == ["a photo of a {c}."]
    assert splits.ood_tests == ["cifar10_1", "cifar10_2"]
    train, val, test = (load_split(out / f"{n}.json") for n in ("id_train", "id_val", "id_test"))
    assert len(train) + len(val) == 100 and len(val) == 10  # id_val_fraction 0.1, stratified
    assert sorted(np.concatenate([train.labels, val.labels]).tolist()) == sorted(fake.train_labels.tolist())
    assert sorted(val.labels.tolist()) == list(range(10))
    rows = np.concatenate([train.images[:, 0, 0, 1], val.images[:, 0, 0, 1]])
    assert sorted(rows.tolist()) == list(range(100))  # every training image exactly once
    for split in (train, val, test):
        _check_encoding(split, split.labels)
    assert test.labels.tolist() == fake.test_labels.tolist()


def test_cifar10c_source_is_the_severity_block(built, fake) -> None:
    splits, out = built
    source = load_split(out / splits.manifests["ood_val_source"])
    assert isinstance(source, NpyRowsImages)
    n = fake.per_severity
    assert len(source) == 15 * n
    expected = np.tile(fake.c_labels[4 * n : 5 * n], 15)  # severity 5 = the last block of rows
    assert source.labels.tolist() == expected.tolist()
    assert source.groups.tolist() == np.repeat(np.arange(15), n).tolist()
    for i in (0, n + 3, 15 * n - 1):
        image = source.image(i)
        assert image[0, 0, 2] == 5  # blue = severity
        assert image[0, 0, 1] == 4 * n + i % n  # the row within the file
        assert image[0, 0, 0] == 20 * source.labels[i]
    manifest = read_manifest(out / splits.manifests["ood_val_source"])
    assert manifest["severity"] == 5 and manifest["format"] == "npy_rows"


def test_severity_option_selects_other_rows(fake, tmp_path: Path) -> None:
    splits = _build(fake.root, tmp_path, "data.options.cifar10c_severity=2", "data.options.cifar10c_corruptions=[fog]")
    source = load_split(tmp_path / splits.manifests["ood_val_source"])
    n = fake.per_severity
    assert source.labels.tolist() == fake.c_labels[n : 2 * n].tolist()
    assert source.group_names == ["fog"] and source.image(0)[0, 0, 2] == 2


def test_ood_tests_have_their_labels(built, fake) -> None:
    splits, out = built
    c101 = load_split(out / splits.manifests["cifar10_1"])
    c102 = load_split(out / splits.manifests["cifar10_2"])
    assert c101.labels.tolist() == fake.cifar101_labels.tolist()
    assert c102.labels.tolist() == fake.cifar102_labels.tolist()
    _check_encoding(c101, c101.labels)
    _check_encoding(c102, c102.labels)


def test_memory_mapped_split_pickles_without_its_maps(built) -> None:
    splits, out = built
    source = load_split(out / splits.manifests["ood_val_source"])
    first = source.image(7)
    assert source._arrays  # a map is open now
    clone = pickle.loads(pickle.dumps(source))
    assert clone._arrays == {}
    assert np.array_equal(clone.image(7), first)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))

    marker = ""


def test_a_pickle_that_runs_code_is_refused(fake, tmp_path: Path) -> None:
    root = tmp_path / "evil"
    shutil.copytree(fake.root, root)
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps({"data": _Exploit()}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_3.*refusing to load global (posix|os)\.system"):
        _build(root, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()  # validation happens before anything is written


def test_truncated_or_wrong_batches_are_data_errors(fake, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    shutil.copytree(fake.root, root)
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError, match="test_batch"):
        _build(root, tmp_path / "out")
    batch.write_bytes(pickle.dumps({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}, protocol=2))
    with pytest.raises(DataError, match=r"'data' must be a uint8 array \[N, 3072\]"):
        _build(root, tmp_path / "out")


def test_missing_files_are_listed(fake, tmp_path: Path) -> None:
    root = tmp_path / "partial"
    shutil.copytree(fake.root, root)
    (root / "CIFAR-10-C" / "fog.npy").unlink()
    (root / "CIFAR-10.2" / "cifar102_test.npz").unlink()
    with pytest.raises(DataError) as error:
        _build(root, tmp_path / "out")
    assert "CIFAR-10-C/fog.npy" in str(error.value) and "cifar102_test.npz" in str(error.value)
    assert "gcloud storage cp" in str(error.value)
    # Dropping the shift that is not staged makes the rest build.
    only_staged = ("data.options.shifts=[cifar10_1]", "data.options.cifar10c_corruptions=[snow]")
    splits = _build(root, tmp_path / "out2", *only_staged)
    assert splits.ood_tests == ["cifar10_1"]


def test_cifar10c_with_uneven_rows_is_an_error(fake, tmp_path: Path) -> None:
    root = tmp_path / "uneven"
    shutil.copytree(fake.root, root)
    np.save(root / "CIFAR-10-C" / "fog.npy", np.zeros((7, 32, 32, 3), np.uint8))
    np.save(root / "CIFAR-10-C" / "labels.npy", np.zeros(7, np.uint8))
    with pytest.raises(DataError, match="not 5 equal severities"):
        _build(root, tmp_path / "out", "data.options.cifar10c_corruptions=[fog]")


def test_bad_options(fake, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cifar10c_severity: Input should be greater than or equal to 1 \(got 0\)"):
        _build(fake.root, tmp_path, "data.options.cifar10c_severity=0")
    with pytest.raises(ConfigError, match="unknown \\['rain'\\]"):
        _build(fake.root, tmp_path, "data.options.cifar10c_corruptions=[rain]")
    with pytest.raises(ConfigError, match="id_val_fraction: Input should be less than 1"):
        _build(fake.root, tmp_path, "data.options.id_val_fraction=5000")
