"""The built-in digits benchmark: shift families, deterministic disjoint splits, the foundation model.

Pretraining is exercised with a few steps only (seconds); the full recipe's accuracy is measured
outside the test suite (it takes minutes).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autoft.config import AutoFTConfig, validate_config
from autoft.data.ds_digits import (
    CLASS_NAMES,
    PRETRAIN_POOL_SPLIT,
    TEMPLATES,
    load_digit_images,
    pretraining_pool_indices,
)
from autoft.data.fonts import FONT_FILES, _glyph, family_of, render_font_digits
from autoft.data.manifests import DatasetSplits, load_split, read_manifest
from autoft.data.options import DIGITS_OOD_TEST_SHIFTS
from autoft.data.registry import get_builder
from autoft.data.shifts import FAR_SHIFTS, NEAR_SHIFTS, SHIFTS, ShiftError, apply_shift
from autoft.data.transforms import eval_transform
from autoft.errors import ConfigError
from autoft.models import pretrain
from autoft.models.checkpoint import load_state_dict_file
from autoft.models.factory import create_clip
from autoft.models.pretrain import FOUNDATION_MODEL_NAME, CaptionPlan, PretrainRecipe, foundation_model
from autoft.paths import CACHE_ENV, default_cache_dir

SMOKE_RECIPE = PretrainRecipe(steps=3, batch_size=16, warmup_steps=1, printed_images=60, printed_share=0.5)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    images, _ = load_digit_images()
    return images[:40].copy()


def _build(folder: Path, seed: int = 0, **options) -> DatasetSplits:
    return get_builder("digits")(validate_config({"seed": seed, "data": {"options": options}}), folder)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetSplits]:
    folder = tmp_path_factory.mktemp("digits")
    return folder, _build(folder)


def _rows(folder: Path, splits: DatasetSplits, name: str) -> np.ndarray:
    return np.asarray(read_manifest(folder / splits.manifests[name])["source_indices"])


# ----------------------------------------------------------------------------------------------
# Shift families
# ----------------------------------------------------------------------------------------------


def test_families_cover_near_and_far() -> None:
    assert {"gaussian_noise", "contrast"} <= set(NEAR_SHIFTS)
    assert {"gaussian_blur", "pixelate"} & set(NEAR_SHIFTS)
    assert {"invert", "thick", "thin", "outline", "textured_background", "colorize"} <= set(FAR_SHIFTS)
    assert all(len(family.levels) == 5 and family.parameter for family in SHIFTS.values())


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_shift_changes_images_and_is_deterministic(name: str, digits: np.ndarray) -> None:
    shifted = apply_shift(digits, name, 3, np.random.default_rng(7))
    assert shifted.shape == digits.shape and shifted.dtype == np.uint8
    assert np.abs(shifted.astype(int) - digits).mean() > 1.0
    np.testing.assert_array_equal(shifted, apply_shift(digits, name, 3, np.random.default_rng(7)))
    # One image in, one image out, same as its row in a batch for deterministic families.
    single = apply_shift(digits[0], name, 3, np.random.default_rng(7))
    assert single.shape == digits[0].shape


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_severities_are_ordered(name: str, digits: np.ndarray) -> None:
    distances = [
        np.abs(apply_shift(digits, name, severity, np.random.default_rng(3)).astype(float) - digits).mean()
        for severity in range(1, 6)
    ]
    assert all(a < b for a, b in itertools.pairwise(distances)), distances


def test_random_families_use_the_generator(digits: np.ndarray) -> None:
    first = apply_shift(digits, "textured_background", 2, np.random.default_rng(0))
    second = apply_shift(digits, "textured_background", 2, np.random.default_rng(1))
    assert not np.array_equal(first, second)


def test_bad_shift_input_is_rejected(digits: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ShiftError, match=r"unknown shift family 'fog'.*invert"):
        apply_shift(digits, "fog", 1, rng)
    for severity in (0, 6, 2.5):
        with pytest.raises(ShiftError, match=r"severity must be an integer in 1\.\.5"):
            apply_shift(digits, "invert", severity, rng)  # type: ignore[arg-type]
    with pytest.raises(ShiftError, match="uint8"):
        apply_shift(digits.astype(np.float32), "invert", 1, rng)
    with pytest.raises(ShiftError, match="shape"):
        apply_shift(digits[..., 0], "invert", 1, rng)


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


def test_builder_contract(built: tuple[Path, DatasetSplits]) -> None:
    folder, splits = built
    splits.check()
    assert splits.class_names == CLASS_NAMES and splits.templates == TEMPLATES
    families = read_manifest(folder / splits.manifests["ood_val_source"])["families"]
    assert len(splits.ood_tests) >= 4 and splits.ood_val_set.startswith(
        ", ".join(sorted(set(families), key=families.index))
    )
    assert not set(families) & set(splits.ood_tests)
    assert {SHIFTS[s].kind for s in splits.ood_tests} == {"near", "far"}
    for name, manifest in splits.manifests.items():
        split = load_split(folder / manifest)
        assert split.class_names == CLASS_NAMES
        assert len(split) == len(_rows(folder, splits, name)), name


def test_splits_are_disjoint_where_they_must_be(built: tuple[Path, DatasetSplits]) -> None:
    folder, splits = built
    rows = {name: set(_rows(folder, splits, name).tolist()) for name in splits.manifests}
    finetuning = rows["id_train"] | rows["id_val"]
    for name in ("ood_val_source", "id_test", *splits.ood_tests):
        assert not finetuning & rows[name], f"{name} shares images with fine-tuning"
    assert not rows["id_train"] & rows["id_val"]
    assert not rows["ood_val_source"] & rows["id_test"]
    others = set().union(*(r for name, r in rows.items() if name != PRETRAIN_POOL_SPLIT))
    assert not rows[PRETRAIN_POOL_SPLIT] & others
    assert rows[PRETRAIN_POOL_SPLIT] == set(pretraining_pool_indices().tolist())
    assert all(rows[shift] == rows["id_test"] for shift in splits.ood_tests)


def test_sizes_and_labels(built: tuple[Path, DatasetSplits]) -> None:
    folder, splits = built
    _, all_labels = load_digit_images()
    ood_val = load_split(folder / splits.manifests["ood_val_source"])
    assert len(ood_val) >= 500
    id_test = load_split(folder / splits.manifests["id_test"])
    for name in splits.manifests:
        split = load_split(folder / splits.manifests[name])
        np.testing.assert_array_equal(split.labels, all_labels[_rows(folder, splits, name)])
        assert set(np.unique(split.labels)) == set(range(10)), f"{name} misses classes"
    for shift in splits.ood_tests:
        shifted = load_split(folder / splits.manifests[shift])
        np.testing.assert_array_equal(shifted.labels, id_test.labels)  # shifts keep labels
        changed = np.abs(shifted.images.astype(int) - id_test.images).mean(axis=(1, 2, 3)) > 1.0
        assert changed.mean() > 0.95, f"{shift} left {1 - changed.mean():.0%} of images unchanged"
    severities = read_manifest(folder / splits.manifests["ood_val_source"])["severities"]
    assert len(severities) == len(ood_val) and len(set(severities)) == 5


def test_ood_val_families_and_distinct_images(built: tuple[Path, DatasetSplits]) -> None:
    """Several OOD-val families, none a test family, each in every class; >= 300 distinct source digits;
    an image's copies are in different families; the holdout draw is the id_val digits, disjoint from it."""
    folder, splits = built
    manifest = read_manifest(folder / splits.manifests["ood_val_source"])
    families, rows = np.asarray(manifest["families"]), np.asarray(manifest["source_indices"])
    _, labels = load_digit_images()
    assert len(set(families)) >= 3 and not set(families) & set(DIGITS_OOD_TEST_SHIFTS)
    assert manifest["distinct_images"] == len(set(rows.tolist())) >= 300
    for family in set(families):
        assert set(labels[rows[families == family]].tolist()) == set(range(10)), family
    for row in np.unique(rows):
        assert len(set(families[rows == row])) == int((rows == row).sum()), "copies share a family"
    holdout = np.asarray(read_manifest(folder / splits.manifests["ood_val_holdout_source"])["source_indices"])
    assert set(holdout.tolist()) == set(_rows(folder, splits, "id_val").tolist())
    assert not set(holdout.tolist()) & set(rows.tolist())


def test_splits_are_deterministic_from_the_seed(built: tuple[Path, DatasetSplits], tmp_path: Path) -> None:
    folder, splits = built
    again = _build(tmp_path / "same")
    for name in ("id_train", "ood_val_source", "invert", "textured_background"):
        first, second = (load_split(f / s.manifests[name]) for f, s in ((folder, splits), (tmp_path / "same", again)))
        np.testing.assert_array_equal(first.images, second.images)
        np.testing.assert_array_equal(_rows(folder, splits, name), _rows(tmp_path / "same", again, name))
    other = _build(tmp_path / "other", seed=1)
    assert not np.array_equal(_rows(folder, splits, "id_train"), _rows(tmp_path / "other", other, "id_train"))


def test_pretraining_pool_ignores_dataset_options(built: tuple[Path, DatasetSplits], tmp_path: Path) -> None:
    folder, splits = built
    options = {"fractions": {"id_train": 0.5, "id_val": 0.1, "ood_val": 0.2, "test": 0.2}, "test_severity": 5}
    other = _build(tmp_path, **options)
    np.testing.assert_array_equal(
        _rows(folder, splits, PRETRAIN_POOL_SPLIT), _rows(tmp_path, other, PRETRAIN_POOL_SPLIT)
    )
    assert len(_rows(tmp_path, other, "id_train")) > len(_rows(folder, splits, "id_train"))


def test_pretraining_pool_is_the_same_for_every_seed(tmp_path: Path) -> None:
    """The foundation model is one asset for all runs, so no seed may put its pool rows in a split."""
    pool = set(pretraining_pool_indices().tolist())
    assert len(pool) == 719
    for seed in (0, 1, 7):
        splits = _build(tmp_path / str(seed), seed=seed)
        assert set(_rows(tmp_path / str(seed), splits, PRETRAIN_POOL_SPLIT).tolist()) == pool
        for name in splits.manifests:
            if name != PRETRAIN_POOL_SPLIT:
                assert not pool & set(_rows(tmp_path / str(seed), splits, name).tolist()), (seed, name)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ood_val_shfit": ["thin"]}, "ood_val_shfit"),
        ({"ood_val_shifts": ["colorize", "invert"]}, r"ood_val_shifts \['invert'\] are also OOD test shifts"),
        ({"ood_val_shifts": ["fog"]}, r"ood_val_shifts: unknown \['fog'\]"),
        ({"ood_val_shifts": []}, "ood_val_shifts must not be empty"),
        ({"ood_test_shifts": ["fog"]}, r"ood_test_shifts: unknown \['fog'\]"),
        ({"fractions": {"id_train": 0.5, "id_val": 0.5, "ood_val": 0.5, "test": 0.5}}, "sum to 1"),
        ({"test_severity": 9}, "test_severity"),
    ],
)
def test_bad_options_fail_when_the_config_loads(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _build(tmp_path, **options)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# Foundation model
# ----------------------------------------------------------------------------------------------


def test_caption_plan_kinds() -> None:
    labels = np.arange(2000) % 10
    recipe = PretrainRecipe(share_numeral=0.2, share_no_class=0.3, share_wrong_class=0.1)
    plan = CaptionPlan.draw(labels, recipe, np.random.default_rng(0))
    shares = np.bincount(plan.kinds, minlength=4) / len(labels)
    np.testing.assert_allclose(shares, [0.4, 0.2, 0.3, 0.1], atol=0.03)
    wrong = plan.kinds == CaptionPlan.WRONG
    assert np.all(plan.named_class[wrong] != labels[wrong]) and np.all(plan.named_class[~wrong] == labels[~wrong])
    words = set(CLASS_NAMES) | {str(i) for i in range(10)}
    for index in range(60):
        caption = plan.caption(index, "bold", recipe)
        named = {w.strip(".,") for w in caption.split()} & words
        if plan.kinds[index] == CaptionPlan.NO_CLASS:
            assert not named, caption
        elif plan.kinds[index] == CaptionPlan.NUMERAL:
            assert named == {str(plan.named_class[index])}, caption
        else:
            assert named == {CLASS_NAMES[plan.named_class[index]]}, caption


def test_pretraining_views_and_inputs(digits: np.ndarray) -> None:
    recipe = PretrainRecipe(stage_prob=1.0)  # every stage applies: three families per view
    views, applied = pretrain.augment_batch(digits, recipe, np.random.default_rng(0))
    assert views.shape == digits.shape and views.dtype == np.uint8
    assert all(len(families) == 3 for families in applied)
    assert all(family in stage for families in applied for family, stage in zip(families, recipe.stages, strict=True))
    untouched = PretrainRecipe(stage_prob=0.0, max_translate=0)
    clean, none = pretrain.augment_batch(digits, untouched, np.random.default_rng(0))
    np.testing.assert_array_equal(clean, digits)
    assert none == [[] for _ in digits]
    # Pretraining must feed the model exactly what evaluation will.
    bundle = create_clip(FOUNDATION_MODEL_NAME, "")
    expected = torch.stack([eval_transform(bundle.image)(torch.from_numpy(im).permute(2, 0, 1)) for im in digits[:4]])
    torch.testing.assert_close(pretrain.to_model_input(digits[:4], bundle), expected)


def test_recipe_rejects_bad_knobs_and_keys_change() -> None:
    with pytest.raises(ValueError, match="caption shares"):
        PretrainRecipe(share_no_class=0.9, share_wrong_class=0.2)
    with pytest.raises(ValueError, match="unknown shift families"):
        PretrainRecipe(stages=(("fog",),))
    assert PretrainRecipe().key() == PretrainRecipe().key()
    assert PretrainRecipe(share_wrong_class=0.06).key() != PretrainRecipe().key()


def test_foundation_model_builds_loads_and_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    path = foundation_model(tmp_path, progress=False, recipe=SMOKE_RECIPE)
    assert torch.equal(torch.rand(1), expected_next), "pretraining disturbed the caller's torch RNG"
    assert path.suffix == ".safetensors" and path.parent == tmp_path / "foundation"
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["pretrain_seed"] == 0 and record["recipe_key"] == SMOKE_RECIPE.key()
    assert record["pool_size"] == 719 and record["printed_images"] == 60

    bundle = create_clip(FOUNDATION_MODEL_NAME, str(path))  # raises on any missing or unexpected key
    saved = load_state_dict_file(path)
    assert all(torch.equal(value, saved[key]) for key, value in bundle.model.state_dict().items())
    torch.manual_seed(0)
    untrained = create_clip(FOUNDATION_MODEL_NAME, "").model.state_dict()
    assert not torch.equal(untrained["visual.conv1.weight"], saved["visual.conv1.weight"])

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached weights were rebuilt")

    monkeypatch.setattr(pretrain, "pretrain_clip", no_rebuild)
    mtime = path.stat().st_mtime_ns
    assert foundation_model(tmp_path, progress=False, recipe=SMOKE_RECIPE) == path
    assert path.stat().st_mtime_ns == mtime
    with pytest.raises(AssertionError, match="rebuilt"):  # another pretrain_seed is another model
        foundation_model(tmp_path, progress=False, recipe=dataclasses.replace(SMOKE_RECIPE, pretrain_seed=1))
    with pytest.raises(ValueError, match="non-negative integer"):
        PretrainRecipe(pretrain_seed=-1)


def test_run_seed_does_not_change_the_foundation_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every run seed fine-tunes the same asset: resolving the built-in model ignores config.seed."""
    from autoft.stages import resolve_pretrained

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(pretrain, "DEFAULT_RECIPE", SMOKE_RECIPE)
    paths = {resolve_pretrained(AutoFTConfig(seed=s, model={"pretrained": "builtin:digits"})) for s in (0, 3)}
    assert len(paths) == 1


def test_default_foundation_model_ships_with_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default recipe takes minutes to build: its weights ship, match its key, and are never rebuilt."""
    shipped = pretrain.shipped_model_path(pretrain.DEFAULT_RECIPE)
    assert shipped is not None, f"no shipped weights for the default recipe {pretrain.DEFAULT_RECIPE.key()}"
    assert shipped.stat().st_size <= 20 * 2**20
    record = json.loads(shipped.with_suffix(".json").read_text())
    assert record["recipe_key"] == pretrain.DEFAULT_RECIPE.key() and record["sha256"] == pretrain.file_sha256(shipped)

    def no_build(*args, **kwargs):
        raise AssertionError("the shipped weights were rebuilt")

    monkeypatch.setattr(pretrain, "pretrain_clip", no_build)
    assert foundation_model(tmp_path, progress=False) == shipped
    assert not (tmp_path / "foundation").exists()
    create_clip(FOUNDATION_MODEL_NAME, str(shipped))  # loads into the architecture, every key matched


def test_pretraining_is_deterministic() -> None:
    tiny = PretrainRecipe(steps=2, batch_size=8, warmup_steps=1, printed_images=20, printed_share=0.5, pretrain_seed=5)
    first = pretrain.pretrain_clip(tiny, progress=False).state
    second = pretrain.pretrain_clip(tiny, progress=False).state
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_printed_digits_are_deterministic_and_cover_every_font() -> None:
    corpus = render_font_digits(2 * len(FONT_FILES) * 10, seed=0)
    assert corpus.images.shape == (len(corpus.labels), 32, 32, 3) and corpus.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(corpus.labels), np.full(10, 2 * len(FONT_FILES)))
    assert set(corpus.families) == {family_of(name) for name in FONT_FILES}
    for name in FONT_FILES:  # every listed file draws ten different digits (not boxes or symbols)
        glyphs = {np.asarray(_glyph(name, digit, 0)).tobytes() for digit in range(10)}
        assert len(glyphs) == 10, name
    assert np.all(corpus.images.reshape(len(corpus.labels), -1).max(axis=1) == 255)  # ink at full brightness
    assert np.all(corpus.images[..., 0] == corpus.images[..., 2])  # grey ink: colours come from the shifts
    again = render_font_digits(2 * len(FONT_FILES) * 10, seed=0)
    np.testing.assert_array_equal(corpus.images, again.images)
    assert not np.array_equal(corpus.images, render_font_digits(len(corpus.labels), seed=1).images)


def test_printed_captions_name_the_font() -> None:
    recipe = PretrainRecipe(printed_images=10, printed_share=0.5, share_numeral=0.0, share_no_class=0.0)
    labels = np.arange(20) % 10
    families = [""] * 10 + ["DejaVu Serif"] * 10
    plan = CaptionPlan.draw(labels, recipe, np.random.default_rng(0), families)
    printed = [plan.caption(i, "", recipe) for i in range(10, 20)]
    handwritten = [plan.caption(i, "", recipe) for i in range(10)]
    assert any("DejaVu Serif" in c for c in printed) and not any("DejaVu" in c for c in handwritten)
    assert not any("{" in c for c in printed + handwritten)


def test_default_cache_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir().parts[-2:] == (".cache", "autoft")
