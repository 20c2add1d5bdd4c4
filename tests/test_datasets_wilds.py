"""WILDS iWildCam / FMoW: builders on fake copies, the manifest format, official-metric equality,
the torch_scatter stand-in, the silenced 'outdated' web call, and clear errors for bad copies."""

from __future__ import annotations

import csv
import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from autoft.config import resolve_config
from autoft.data import wilds_compat
from autoft.data.ds_wilds import WildsImages, build_fmow, build_iwildcam, wilds_official_metrics
from autoft.data.images import NO_GROUP
from autoft.data.manifests import load_split, read_manifest, write_manifest
from autoft.errors import DataError
from autoft.evaluate import Predictions, macro_f1, worst_group_accuracy
from autoft.models.classifier import build_zeroshot_classifier
from fakes.wilds import FMOW_CATEGORIES, IWILDCAM_CLASSES, make_fake_fmow, make_fake_iwildcam

PRESETS = Path(__file__).resolve().parents[1] / "src" / "autoft" / "presets"
SPLITS = {"id_train": "train", "id_val": "id_val", "id_test": "id_test", "ood_val_source": "val", "ood_test": "test"}


@pytest.fixture(scope="module")
def iwildcam_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_iwildcam(tmp_path_factory.mktemp("wilds_iwildcam"), per_split=24)


@pytest.fixture(scope="module")
def fmow_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_fmow(tmp_path_factory.mktemp("wilds_fmow"), per_cell=6)


@pytest.fixture(scope="module")
def iwildcam_built(iwildcam_root: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("iwildcam_out")
    config = resolve_config(preset="iwildcam", overrides=[f"data.root={iwildcam_root}"])
    return build_iwildcam(config, out), out


@pytest.fixture(scope="module")
def fmow_built(fmow_root: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("fmow_out")
    config = resolve_config(preset="fmow", overrides=[f"data.root={fmow_root}"])
    return build_fmow(config, out), out


def _metadata_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_iwildcam_builder_maps_official_splits_with_labels_and_names(iwildcam_built, iwildcam_root: Path) -> None:
    splits, out = iwildcam_built
    splits.check()
    assert splits.class_names == list(IWILDCAM_CLASSES)  # from categories.csv
    assert splits.templates == ["a photo of {c}.", "{c} in the wild."]
    assert splits.ood_tests == ["ood_test"] and set(splits.manifests) == set(SPLITS)
    rows = _metadata_rows(iwildcam_root / "iwildcam_v2.0" / "metadata.csv")
    for ours, theirs in SPLITS.items():
        manifest = read_manifest(out / splits.manifests[ours])
        assert (manifest["format"], manifest["dataset"], manifest["split"]) == ("wilds", "iwildcam", theirs)
        images = load_split(out / splits.manifests[ours])
        expected = [int(r["y"]) for r in rows if r["split"] == theirs]
        assert images.labels.tolist() == expected
        assert (images.groups == NO_GROUP).all()
        first = next(r for r in rows if r["split"] == theirs)
        # The image is the file WILDS names for that row, decoded to RGB.
        from PIL import Image

        with Image.open(iwildcam_root / "iwildcam_v2.0" / "train" / first["filename"]) as reference:
            assert np.array_equal(np.asarray(images.image(0)), np.asarray(reference.convert("RGB")))


def test_iwildcam_without_categories_names_classes_by_index(tmp_path: Path) -> None:
    root = make_fake_iwildcam(tmp_path / "data", per_split=4, with_categories=False)
    config = resolve_config(preset="iwildcam", overrides=[f"data.root={root / 'iwildcam_v2.0'}"])  # the folder itself
    splits = build_iwildcam(config, tmp_path / "out")
    assert splits.class_names == [f"class {i}" for i in range(len(IWILDCAM_CLASSES))]


def test_fmow_builder_uses_wilds_categories_and_region_groups(fmow_built, fmow_root: Path) -> None:
    from wilds.datasets.fmow_dataset import categories

    splits, out = fmow_built
    assert len(splits.class_names) == 62 and splits.class_names[1] == "airport hangar"
    assert len(splits.templates) == 16 and all("{c}" in t for t in splits.templates)
    test = load_split(out / splits.manifests["ood_test"])
    assert isinstance(test, WildsImages)
    rows = [r for r in _metadata_rows(fmow_root / "fmow_v1.1" / "rgb_metadata.csv") if r["split"] != "seq"]
    by_index = {i: r for i, r in enumerate(rows)}
    regions = {"USA": "Americas", "FRA": "Europe", "KEN": "Africa", "JPN": "Asia"}
    for position, dataset_index in enumerate(test.dataset_indices):
        row = by_index[int(dataset_index)]
        assert row["timestamp"].startswith("2017")  # OOD test = 2016 and later
        assert categories[test.labels[position]] == row["category"]
        group = test.groups[position]
        if row["country_code"] in regions:
            assert test.group_names[group] == regions[row["country_code"]]
        else:
            assert group == NO_GROUP  # WILDS' "Other" region is left out of the worst region
    assert set(FMOW_CATEGORIES) >= {categories[y] for y in test.labels}


def _random_predictions(images: WildsImages, seed: int, accuracy_by_group: dict[int, float]) -> Predictions:
    """Predictions whose correctness rate varies by group, as logits over all classes."""
    rng = np.random.default_rng(seed)
    n, classes = len(images), len(images.class_names)
    rates = np.array([accuracy_by_group.get(int(g), 0.5) for g in images.groups])
    correct = rng.random(n) < rates
    wrong = (images.labels + rng.integers(1, classes, size=n)) % classes
    predicted = np.where(correct, images.labels, wrong)
    logits = rng.normal(size=(n, classes)).astype(np.float32)
    logits[np.arange(n), predicted] = 10.0
    return Predictions(logits=logits, labels=images.labels.copy(), groups=images.groups.copy())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fmow_worst_region_accuracy_equals_wilds(fmow_built, seed: int) -> None:
    splits, out = fmow_built
    for split in ("ood_test", "id_val"):
        images = load_split(out / splits.manifests[split])
        pred = _random_predictions(images, seed, {0: 0.9, 1: 0.3 + 0.2 * seed, 2: 0.6, 3: 0.8, NO_GROUP: 0.0})
        official = wilds_official_metrics(images, pred.labels, pred.predicted)
        ours = worst_group_accuracy(pred)
        assert np.float32(ours) == np.float32(official["acc_worst_region"])
        # "Other" is all wrong here: it would be the worst region if it were not excluded.
        assert ours > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iwildcam_macro_f1_equals_wilds(iwildcam_built, seed: int) -> None:
    splits, out = iwildcam_built
    images = load_split(out / splits.manifests["ood_test"])
    pred = _random_predictions(images, seed, {NO_GROUP: 0.4 + 0.2 * seed})
    official = wilds_official_metrics(images, pred.labels, pred.predicted)
    assert np.float32(macro_f1(pred)) == np.float32(official["F1-macro_all"])
    assert 0 < official["F1-macro_all"] < 1


def test_official_metrics_follow_manifest_indices_and_reject_misordered_predictions(fmow_built, tmp_path) -> None:
    splits, out = fmow_built
    manifest = read_manifest(out / splits.manifests["ood_test"])
    chosen = [0, 3, 5, 11, 17, 20, 29]
    fields = {k: v for k, v in manifest.items() if k not in ("schema", "name", "format", "class_names")}
    fields["indices"] = chosen
    write_manifest(tmp_path / "subset.json", "subset", "wilds", manifest["class_names"], **fields)
    subset = load_split(tmp_path / "subset.json")
    full = load_split(out / splits.manifests["ood_test"])
    assert subset.labels.tolist() == full.labels[chosen].tolist()
    pred = _random_predictions(full, 5, {0: 0.5, 1: 0.7})
    sub_pred = Predictions(pred.logits[chosen], pred.labels[chosen], pred.groups[chosen])
    official = wilds_official_metrics(subset, sub_pred.labels, sub_pred.predicted)
    assert np.float32(worst_group_accuracy(sub_pred)) == np.float32(official["acc_worst_region"])
    shuffled = Predictions(pred.logits, pred.labels[::-1].copy(), pred.groups)
    if not np.array_equal(shuffled.labels, full.labels):
        with pytest.raises(ValueError, match="split order"):
            wilds_official_metrics(full, shuffled.labels, shuffled.predicted)


def test_wilds_split_is_picklable_for_loader_workers(fmow_built) -> None:
    splits, out = fmow_built
    images = load_split(out / splits.manifests["id_train"])
    clone = pickle.loads(pickle.dumps(images))
    assert np.array_equal(np.asarray(clone.image(2)), np.asarray(images.image(2)))
    assert clone.labels.tolist() == images.labels.tolist()


def test_gs_root_is_staged_through_storage(monkeypatch: pytest.MonkeyPatch, iwildcam_root: Path, tmp_path) -> None:
    import autoft.storage

    calls = []

    def fake_stage(uri: str, *args, **kwargs) -> Path:
        calls.append(uri)
        return iwildcam_root

    monkeypatch.setattr(autoft.storage, "stage_to_local", fake_stage, raising=False)
    config = resolve_config(preset="iwildcam", overrides=["data.root=gs://bucket/wilds"])
    splits = build_iwildcam(config, tmp_path)
    assert calls == ["gs://bucket/wilds"]
    # The manifest names the bucket, never this machine's staging folder (tests/test_no_shared_disk.py loads it).
    assert read_manifest(tmp_path / splits.manifests["id_train"])["root"] == "gs://bucket/wilds"


# ----------------------------------------------------------------------------------------------
# Clear errors for missing or malformed copies.
# ----------------------------------------------------------------------------------------------


def _build(root: Path, out: Path, name: str = "iwildcam"):
    config = resolve_config(preset=name, overrides=[f"data.root={root}"])
    return (build_iwildcam if name == "iwildcam" else build_fmow)(config, out)


def test_missing_dataset_says_where_it_looked_and_how_to_stage(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no iwildcam_v2\.0/ folder in .*empty.*gcloud storage cp") as error:
        _build(tmp_path / "empty", tmp_path / "out")
    assert "download hosts are gone" in str(error.value)
    with pytest.raises(DataError, match="is not a folder"):
        _build(tmp_path / "nowhere", tmp_path / "out", "fmow")
    assert not (tmp_path / "nowhere").exists()  # WILDS would have created it; we check first


def test_incomplete_copy_lists_missing_files(tmp_path: Path) -> None:
    root = make_fake_fmow(tmp_path / "data", per_cell=1)
    (root / "fmow_v1.1" / "RELEASE_v1.1.txt").unlink()
    (root / "fmow_v1.1" / "country_code_mapping.csv").unlink()
    with pytest.raises(DataError, match=r"missing \['RELEASE_v1.1.txt', 'country_code_mapping.csv'\]"):
        _build(root, tmp_path / "out", "fmow")


def test_malformed_metadata_is_a_data_error_not_a_wilds_trace(tmp_path: Path) -> None:
    root = make_fake_iwildcam(tmp_path / "data", per_split=2)
    metadata = root / "iwildcam_v2.0" / "metadata.csv"
    rows = _metadata_rows(metadata)
    with open(metadata, "w", newline="") as handle:  # drop the label column
        writer = csv.DictWriter(handle, fieldnames=[k for k in rows[0] if k != "y"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match=r"malformed .*KeyError"):
        _build(root, tmp_path / "out")


def test_metadata_without_images_is_caught_at_build(tmp_path: Path) -> None:
    root = make_fake_iwildcam(tmp_path / "data", per_split=2)
    for image in (root / "iwildcam_v2.0" / "train").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"missing or unreadable .*train/<filename>"):
        _build(root, tmp_path / "out")


def test_unknown_options_are_rejected(iwildcam_root: Path) -> None:
    from autoft.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data\.options: severity: unknown key"):
        resolve_config(preset="iwildcam", overrides=[f"data.root={iwildcam_root}", "data.options.severity=3"])


# ----------------------------------------------------------------------------------------------
# torch_scatter stand-in and the silenced web call.
# ----------------------------------------------------------------------------------------------


def _reference_scatter(src: torch.Tensor, index: torch.Tensor, dim_size: int, reduce: str) -> torch.Tensor:
    """Group reductions along dim 0 written out by hand; empty groups are 0 (torch_scatter's rule)."""
    out = torch.zeros((dim_size, *src.shape[1:]), dtype=src.dtype)
    for group in range(dim_size):
        members = src[index == group]
        if len(members):
            fn = {"sum": members.sum, "mean": members.mean, "max": members.amax, "min": members.amin}[reduce]
            out[group] = fn(dim=0)
    return out


@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min"])
def test_scatter_standin_matches_group_reductions(reduce: str) -> None:
    generator = torch.Generator().manual_seed(0)
    src = torch.randn(40, 3, generator=generator)
    index = torch.randint(0, 6, (40,), generator=generator)
    index[index == 4] = 5  # group 4 is empty
    got = wilds_compat.scatter(src, index, dim=0, dim_size=7, reduce=reduce)
    assert torch.allclose(got, _reference_scatter(src, index, 7, reduce))
    # Along the last dim of a 2-D tensor with a 1-D index (torch_scatter's broadcasting).
    got_t = wilds_compat.scatter(src.T.contiguous(), index, dim=-1, dim_size=7, reduce=reduce)
    assert torch.allclose(got_t, _reference_scatter(src, index, 7, reduce).T)


def test_scatter_standin_registers_only_without_the_real_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.delitem(sys.modules, "torch_scatter", raising=False)
    if importlib.util.find_spec("torch_scatter") is not None:
        pytest.skip("the real torch_scatter is installed here")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "torch_scatter" else real_find_spec(name, *a)
    )
    assert wilds_compat.install_torch_scatter_standin() is False
    assert "torch_scatter" not in sys.modules
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    assert wilds_compat.install_torch_scatter_standin() is True
    import torch_scatter

    assert torch_scatter.scatter is wilds_compat.scatter
    assert importlib.util.find_spec("torch_scatter") is not None  # a spec, so other probes do not crash


def test_fresh_process_loads_wilds_manifest_without_outdated_threads(iwildcam_built) -> None:
    """A stage that only reads manifests (no builder import) can load the 'wilds' format, and importing
    wilds starts neither wilds' nor outdated's PyPI-check thread (both start on a plain `import wilds`)."""
    splits, out = iwildcam_built
    script = textwrap.dedent(
        """
        import json, sys, threading
        started = []
        original = threading.Thread.start
        def record(self):
            started.append(getattr(self._target, "__module__", None))
            return original(self)
        threading.Thread.start = record
        from autoft.data.manifests import load_split
        images = load_split(sys.argv[1])
        import wilds
        print(json.dumps({"n": len(images), "type": type(images).__name__, "threads": started,
                          "check_outdated": wilds.version.check_outdated is None,
                          "outdated_module": "outdated" in sys.modules}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(out / splits.manifests["id_val"])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["type"] == "WildsImages" and report["n"] == 24
    assert not [m for m in report["threads"] if m and (m.startswith("wilds") or m.startswith("outdated"))]
    assert report["check_outdated"] and not report["outdated_module"]


def test_evaluate_reports_wilds_own_headline_metric(fmow_root: Path, tmp_path: Path) -> None:
    """stage_evaluate on a WILDS split: the headline value is WILDS' acc_worst_region, ours stays beside it."""
    from autoft.stages import stage_evaluate, stage_prepare

    config = resolve_config(
        preset="fmow",
        overrides=[
            f"data.root={fmow_root}",
            "device=cpu",
            "model.pretrained=''",
            "model.name=autoft-tiny-vit",
            # The fake FMoW's training split has 30 images: batches a fine-tune of it could use.
            "data.batch_size=16",
            "finetune.batch_size=16",
        ],
    )
    data = stage_prepare(config, tmp_path / "data")
    torch.manual_seed(0)
    model = build_zeroshot_classifier("autoft-tiny-vit", "", data.class_names, data.templates[:2])
    model.save(tmp_path / "zeroshot")
    evaluation = stage_evaluate(
        config, tmp_path / "data", "ood_test", {"zeroshot": tmp_path / "zeroshot"}, tmp_path / "e.json"
    )
    row = evaluation.models["zeroshot"]
    assert row.value == row.metrics["wilds/acc_worst_region"]
    assert np.float32(row.metrics["worst_group_accuracy"]) == np.float32(row.metrics["wilds/acc_worst_region"])
    assert {"wilds/acc_avg", "wilds/acc_worst_region"} <= set(row.metrics)
