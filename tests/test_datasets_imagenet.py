"""ImageNet family on a fake copy: splits and names, the -R/-A projections, ObjectNet's grouped
projection through the release's mapping chain, V2's index folders, Kaggle's val layout, errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autoft.config import resolve_config
from autoft.data.ds_imagenet import build_imagenet
from autoft.data.manifests import load_split, logits_fn_from_manifest, read_manifest
from autoft.data.options import COMMON_CORRUPTIONS as IMAGENET_C_CORRUPTIONS
from autoft.errors import ConfigError, DataError
from fakes.imagenet import A_SUBSET, NAMES, OBJECTNET, R_SUBSET, WNIDS, make_fake_imagenet

PRESETS = Path(__file__).resolve().parents[1] / "src" / "autoft" / "presets"


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_imagenet(tmp_path_factory.mktemp("imagenet"), severities=(3, 5)).root


@pytest.fixture(scope="module")
def built(imagenet_root: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("imagenet_out")
    config = resolve_config(preset="imagenet", overrides=[f"data.root={imagenet_root}"])
    return build_imagenet(config, out), out


def _build(root: Path, out: Path, *overrides: str):
    return build_imagenet(resolve_config(preset="imagenet", overrides=[f"data.root={root}", *overrides]), out)


def _wnid_of(path: str) -> str:
    return Path(path).parent.name


def test_id_splits_class_order_and_names(built) -> None:
    splits, out = built
    splits.check()
    assert splits.class_names == NAMES  # first synonym from LOC_synset_mapping.txt, in sorted-WNID order
    assert len(splits.templates) == 80
    assert splits.ood_tests == ["imagenet_v2", "imagenet_r", "imagenet_a", "imagenet_sketch", "objectnet"]
    train, val, test = (load_split(out / f"{name}.json") for name in ("id_train", "id_val", "id_test"))
    assert not set(train.paths) & set(val.paths)
    assert len(train) + len(val) == 4 * len(WNIDS)
    assert sorted(set(val.labels.tolist())) == list(range(len(WNIDS)))  # stratified: every class held out
    for split in (train, val, test):
        assert [WNIDS[y] for y in split.labels] == [_wnid_of(p) for p in split.paths]
    assert len(test) == 2 * len(WNIDS)


def test_imagenet_c_source_is_the_chosen_severity_with_corruption_groups(built) -> None:
    splits, out = built
    source = load_split(out / splits.manifests["ood_val_source"])
    assert len(source) == len(IMAGENET_C_CORRUPTIONS) * len(WNIDS)
    assert all(Path(p).parts[-3] == "5" for p in source.paths)  # severity folder
    assert [IMAGENET_C_CORRUPTIONS[g] for g in source.groups] == [Path(p).parts[-4] for p in source.paths]
    assert [WNIDS[y] for y in source.labels] == [_wnid_of(p) for p in source.paths]
    manifest = read_manifest(out / splits.manifests["ood_val_source"])
    assert manifest["severity"] == 5 and manifest["group_names"] == list(IMAGENET_C_CORRUPTIONS)


def _true_class_logits(wnids: list[str], num_classes: int = len(WNIDS)) -> torch.Tensor:
    """Logits that rank each image's true ImageNet class first, others random below."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.rand(len(wnids), num_classes, generator=generator)
    logits[torch.arange(len(wnids)), torch.tensor([WNIDS.index(w) for w in wnids])] = 5.0
    return logits


@pytest.mark.parametrize(("shift", "subset"), [("imagenet_r", R_SUBSET), ("imagenet_a", A_SUBSET)])
def test_subset_shift_projection_picks_the_right_logits(built, shift: str, subset: list[str]) -> None:
    splits, out = built
    manifest = read_manifest(out / splits.manifests[shift])
    images = load_split(out / splits.manifests[shift])
    present = sorted(subset)
    assert manifest["logit_indices"] == [WNIDS.index(w) for w in present]
    assert images.class_names == [NAMES[WNIDS.index(w)] for w in present]
    assert [present[y] for y in images.labels] == [_wnid_of(p) for p in images.paths]
    project = logits_fn_from_manifest(manifest)
    logits = _true_class_logits([_wnid_of(p) for p in images.paths])
    projected = project(logits)
    assert projected.shape == (len(images), len(present))
    assert projected.argmax(dim=1).tolist() == images.labels.tolist()
    # Column k is exactly model class logit_indices[k].
    assert torch.equal(projected, logits[:, manifest["logit_indices"]])


def test_objectnet_groups_follow_the_mapping_chain_and_crop_the_border(built) -> None:
    splits, out = built
    manifest = read_manifest(out / splits.manifests["objectnet"])
    images = load_split(out / splits.manifests["objectnet"])
    folders = sorted(OBJECTNET)  # "sofa" maps to no ImageNet class and is left out
    assert images.class_names == [OBJECTNET[f][0] for f in folders]
    assert manifest["logit_groups"] == [sorted(OBJECTNET[f][1]) for f in folders]
    assert {Path(p).parent.name for p in images.paths} == set(folders)
    assert images.image(0).size == (8, 8)  # 12 px saved, 2 px border cropped on each side
    project = logits_fn_from_manifest(manifest)
    logits = torch.zeros(len(images), len(WNIDS))
    for i, label in enumerate(images.labels):
        members = manifest["logit_groups"][label]
        logits[i, members[-1]] = 3.0  # the top ImageNet class is a member of the true group
    assert project(logits).argmax(dim=1).tolist() == images.labels.tolist()
    # Moving the top logit to a class of another group makes the prediction that group.
    logits[0] = 0.0
    other = (int(images.labels[0]) + 1) % len(folders)
    logits[0, manifest["logit_groups"][other][0]] = 3.0
    assert int(project(logits)[0].argmax()) == other


def test_no_projection_for_full_label_space_shifts(built) -> None:
    splits, out = built
    for shift in ("imagenet_v2", "imagenet_sketch", "id_test"):
        manifest = read_manifest(out / splits.manifests[shift])
        assert logits_fn_from_manifest(manifest) is None
        assert manifest["class_names"] == NAMES
    v2 = load_split(out / splits.manifests["imagenet_v2"])
    # V2 folders are class INDICES: folder k holds class k.
    assert v2.labels.tolist() == [int(Path(p).parent.name) for p in v2.paths]


def test_kaggle_val_layout_and_severity_option(tmp_path: Path) -> None:
    root = make_fake_imagenet(tmp_path / "in", corruptions=("fog", "snow"), severities=(2,), kaggle_val=True).root
    splits = _build(
        root,
        tmp_path / "out",
        "data.options.imagenet_c_corruptions=[fog,snow]",
        "data.options.imagenet_c_severity=2",
        "data.options.shifts=[imagenet_r]",
    )
    test = load_split(tmp_path / "out" / splits.manifests["id_test"])
    assert test.labels.tolist() == [k for k in range(len(WNIDS)) for _ in range(2)]  # from LOC_val_solution.csv
    source = load_split(tmp_path / "out" / splits.manifests["ood_val_source"])
    assert source.group_names == ["fog", "snow"] and len(source) == 2 * len(WNIDS)
    assert splits.ood_tests == ["imagenet_r"] and "objectnet" not in splits.manifests


def test_missing_parts_are_listed_before_any_scan(imagenet_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "partial"
    shutil.copytree(imagenet_root, root)
    shutil.rmtree(root / "imagenet-a")
    shutil.rmtree(root / "imagenet-c" / "fog")
    (root / "objectnet-1.0" / "mappings" / "pytorch_to_imagenet_2012_id.json").unlink()
    with pytest.raises(DataError) as error:
        _build(root, tmp_path / "out")
    message = str(error.value)
    for expected in ("imagenet-a", "imagenet-c/fog/5", "pytorch_to_imagenet_2012_id.json", "data.options.shifts"):
        assert expected in message
    assert not (tmp_path / "out").exists()  # nothing written


def test_shift_with_a_class_unknown_to_train_is_an_error(imagenet_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    shutil.copytree(imagenet_root, root)
    (root / "imagenet-r" / "n09999999").mkdir()
    with pytest.raises(DataError, match="n09999999"):
        _build(root, tmp_path / "out", "data.options.shifts=[imagenet_r]")


def test_class_names_files(imagenet_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "names"
    shutil.copytree(imagenet_root, root)
    (root / "LOC_synset_mapping.txt").unlink()
    options = "data.options.shifts=[imagenet_v2]"
    (root / "classnames.txt").write_text("".join(f"{n} fish\n" for n in NAMES))  # plain names, class order
    assert _build(root, tmp_path / "o1", options).class_names == [f"{n} fish" for n in NAMES]
    (root / "classnames.txt").write_text("".join(f"{w}\tthe {n}\n" for w, n in zip(WNIDS, NAMES, strict=True)))
    assert _build(root, tmp_path / "o2", options).class_names == [f"the {n}" for n in NAMES]
    (root / "classnames.txt").write_text("just one name\n")
    with pytest.raises(DataError, match="expected '<wnid> <name>' lines or 6 names"):
        _build(root, tmp_path / "o3", options)
    (root / "classnames.txt").unlink()
    with caplog.at_level(logging.WARNING):
        assert _build(root, tmp_path / "o4", options).class_names == WNIDS
    assert "zero-shot prompts cannot use" in caplog.text


def test_bad_options_fail_with_the_allowed_values(imagenet_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"imagenet_c_severity: Input should be less than or equal to 5 \(got 9\)"):
        _build(imagenet_root, tmp_path, "data.options.imagenet_c_severity=9")
    with pytest.raises(ConfigError, match="unknown \\['imagenet_x'\\]"):
        _build(imagenet_root, tmp_path, "data.options.shifts=[imagenet_x]")
    with pytest.raises(ConfigError, match="corruption: unknown key"):
        _build(imagenet_root, tmp_path, "data.options.corruption=fog")


def test_logit_groups_validation() -> None:
    with pytest.raises(DataError, match="non-empty"):
        logits_fn_from_manifest({"name": "x", "logit_groups": [[0], []]})
    project = logits_fn_from_manifest({"logit_groups": [[2, 0], [1]]})
    logits = torch.tensor([[1.0, 2.0, 3.0], [5.0, 9.0, 0.0]])
    assert torch.equal(project(logits), torch.tensor([[3.0, 2.0], [5.0, 9.0]]))
    assert np.isclose(float(project(logits).sum()), 19.0)


def test_the_full_class_set_uses_open_clips_distinct_names(tmp_path: Path) -> None:
    from open_clip import IMAGENET_CLASSNAMES

    from autoft.data.ds_imagenet import imagenet_class_names

    wnids = [f"n{i:08d}" for i in range(1000)]
    # WordNet's first synonyms repeat names (two "crane"s, two "maillot"s); a mapping like that must not win.
    (tmp_path / "LOC_synset_mapping.txt").write_text("".join(f"{w} crane, bird\n" for w in wnids))
    names = imagenet_class_names(tmp_path, wnids)
    assert names == list(IMAGENET_CLASSNAMES)
    assert {"crane bird", "construction crane"} <= set(names) and "crane" not in names
    assert len(set(names)) == 998  # as published: "missile" and "sunglasses" each name two classes
    subset = wnids[:3]
    with pytest.raises(DataError, match=r"\['crane'\] name several classes"):
        imagenet_class_names(tmp_path, subset)
    (tmp_path / "classnames.txt").write_text("".join(f"{w} class {i}\n" for i, w in enumerate(wnids)))
    assert imagenet_class_names(tmp_path, subset) == ["class 0", "class 1", "class 2"], "the user's file wins"
