"""The OOD-val set that ranks: distinct source images, several families, its standard error, the
winner flag and the winner's-curse re-score on held-out images."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from sklearn.metrics import f1_score

from autoft.config import SearchConfig, resolve_config
from autoft.contracts import PreparedData, SearchSummary, TrialRecord
from autoft.data.images import ArrayImages
from autoft.data.loaders import BatchStream, ImageBatches
from autoft.data.manifests import DatasetSplits, load_split, read_manifest, save_array_split
from autoft.data.ood_val import HOLDOUT_SPLIT, draw_ood_val, load_scored_split
from autoft.data.options import DIGITS_OOD_TEST_SHIFTS
from autoft.data.shifts import SHIFTS
from autoft.data.subsets import ood_val_indices
from autoft.evaluate import Predictions, macro_f1, worst_group_accuracy
from autoft.models.classifier import CLIPClassifier
from autoft.report import winner_lines
from autoft.search.attrs import HOLDOUT_ATTR, HOLDOUT_SE_ATTR, SE_ATTR
from autoft.search.objective import TrialObjective
from autoft.search.space import SearchSpace
from autoft.search.winner import check_winner
from autoft.stages import stage_prepare
from autoft.standard_error import _weighted_macro_f1, _weighted_worst_group, score_se

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# The digits preset's prepared data
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    return stage_prepare(resolve_config(preset="digits"), tmp_path_factory.mktemp("digits-data"))


def test_the_digits_preset_scores_over_300_distinct_digits_in_several_non_test_families(
    prepared: PreparedData,
) -> None:
    manifest = read_manifest(prepared.manifest("ood_val"))
    split, sources = load_scored_split(prepared.manifest("ood_val"))
    assert prepared.ood_val_distinct == len(set(sources.tolist())) == manifest["distinct_images"] >= 300
    assert prepared.ood_val_examples == len(split) == 2 * prepared.ood_val_distinct  # two families per digit
    families = set(np.asarray(manifest["families"])[manifest["indices"]].tolist())
    assert len(families) >= 3 and not families & set(DIGITS_OOD_TEST_SHIFTS) and families <= set(SHIFTS)
    assert not families & set(prepared.ood_tests)
    # The source images are rows of load_digits(): the manifest's per-example rows agree with source_ids.
    np.testing.assert_array_equal(np.asarray(manifest["source_indices"])[manifest["indices"]], sources)


def test_the_holdout_is_disjoint_by_source_image_and_outside_every_test_split(prepared: PreparedData) -> None:
    _, search_sources = load_scored_split(prepared.manifest("ood_val"))
    holdout, holdout_sources = load_scored_split(prepared.manifest(HOLDOUT_SPLIT))
    assert prepared.ood_val_holdout_distinct == len(set(holdout_sources.tolist())) == 140
    assert len(holdout) == prepared.ood_val_holdout_examples
    assert not set(holdout_sources.tolist()) & set(search_sources.tolist())
    test_rows = set(read_manifest(prepared.manifest("id_test"))["source_indices"])
    train_rows = set(read_manifest(prepared.manifest("id_train"))["source_indices"])
    assert not set(holdout_sources.tolist()) & (test_rows | train_rows)
    assert not set(search_sources.tolist()) & (test_rows | train_rows)


# ----------------------------------------------------------------------------------------------
# Drawing by distinct image, and the holdout of a dataset without a holdout source (WILDS, folders)
# ----------------------------------------------------------------------------------------------


def test_size_counts_distinct_images_and_an_image_brings_all_its_copies() -> None:
    sources = np.repeat(np.arange(50), 3)  # 50 images, 3 copies each, copies adjacent
    labels = np.repeat(np.arange(50) % 5, 3)
    chosen = ood_val_indices(labels, 20, seed=0, class_balanced=True, sources=sources)
    assert len(np.unique(sources[chosen])) == 20 and len(chosen) == 60
    assert np.bincount(labels[chosen], minlength=5).tolist() == [12] * 5  # 4 images x 3 copies per class
    # Without copies, the draw is the one the example-level subset always made.
    flat = np.arange(40) % 4
    np.testing.assert_array_equal(
        ood_val_indices(flat, 12, seed=3, class_balanced=True),
        ood_val_indices(flat, 12, seed=3, class_balanced=True, sources=np.arange(40)),
    )


def _array_source(folder: Path, n: int, copies: int = 1) -> DatasetSplits:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(n) % 3, copies)
    images = rng.integers(0, 255, size=(n * copies, 8, 8, 3), dtype=np.uint8)
    split = ArrayImages(images=images, labels=labels, class_names=["a", "b", "c"])
    fields = {"source_indices": np.repeat(np.arange(n), copies).tolist()} if copies > 1 else {}
    save_array_split(folder, "ood_val_source", split, **fields)
    return DatasetSplits("fake", ["a", "b", "c"], ["{c}"], {"ood_val_source": "ood_val_source.json"}, "val", [])


def test_without_a_holdout_source_the_holdout_is_drawn_from_unused_images(tmp_path: Path) -> None:
    splits = _array_source(tmp_path, 90, copies=2)
    options = resolve_config(preset="digits").data.ood_val.model_copy(
        update={"size": 30, "holdout_size": 40, "class_balanced": True}
    )
    drawn = draw_ood_val(tmp_path, splits, options, seed=0)
    assert (drawn.distinct, drawn.examples, drawn.holdout_distinct, drawn.holdout_examples) == (30, 60, 39, 78)
    _, search = load_scored_split(tmp_path / drawn.manifests["ood_val"])
    held, held_sources = load_scored_split(tmp_path / drawn.manifests[HOLDOUT_SPLIT])
    assert not set(search.tolist()) & set(held_sources.tolist())
    assert np.bincount(held.labels).tolist() == [26, 26, 26]  # 40 // 3 = 13 images per class, 2 copies
    # The subset is the same whether or not a holdout is drawn (its own stream).
    alone = draw_ood_val(
        tmp_path / "alone",
        _array_source(tmp_path / "alone", 90, 2),
        options.model_copy(update={"holdout_size": 0}),
        seed=0,
    )
    assert alone.indices_hash == drawn.indices_hash and HOLDOUT_SPLIT not in alone.manifests
    # A subset that takes every image leaves nothing to hold out: no holdout manifest, counted as 0.
    everything = draw_ood_val(tmp_path, splits, options.model_copy(update={"size": 1000}), seed=0)
    assert HOLDOUT_SPLIT not in everything.manifests and everything.holdout_distinct == 0
    assert load_split(tmp_path / everything.manifests["ood_val"]).labels.shape == (180,)


# ----------------------------------------------------------------------------------------------
# Standard error
# ----------------------------------------------------------------------------------------------


def _logits_for(predicted: np.ndarray, classes: int = 3) -> np.ndarray:
    logits = np.zeros((len(predicted), classes), dtype=np.float32)
    logits[np.arange(len(predicted)), predicted] = 5.0
    return logits


def test_accuracy_se_is_binomial_over_distinct_images() -> None:
    labels = np.zeros(200, dtype=np.int64)
    predicted = (np.arange(200) % 5 == 0).astype(np.int64)  # 80% right
    groups = np.full(200, -1)
    binomial = math.sqrt(0.8 * 0.2 / 200)
    assert score_se("accuracy", _logits_for(predicted), labels, groups) == pytest.approx(binomial)
    # 4 copies of each of 50 images, all right or all wrong together: the binomial at 50, not at 200.
    sources = np.repeat(np.arange(50), 4)
    together = np.repeat((np.arange(50) % 5 == 0).astype(np.int64), 4)
    assert score_se("accuracy", _logits_for(together), labels, groups, sources) == pytest.approx(
        math.sqrt(0.8 * 0.2 / 50)
    )
    # Copies that disagree carry information: the SE falls below the all-or-nothing case.
    mixed = np.tile([1, 0, 0, 0, 0], 40)
    assert score_se("accuracy", _logits_for(mixed), labels, groups, sources) < math.sqrt(0.8 * 0.2 / 50)


def test_weighted_metrics_match_sklearn_and_the_bootstrap_se_is_sane() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    predicted = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 4, 300))
    groups = rng.integers(0, 3, 300)
    ones = np.ones((1, 300))
    expected = f1_score(labels, predicted, average="macro", labels=np.unique(labels), zero_division=0)
    assert _weighted_macro_f1(ones, labels, predicted)[0] == pytest.approx(expected)
    pred = Predictions(logits=_logits_for(predicted, 4), labels=labels, groups=groups)
    assert macro_f1(pred) == pytest.approx(expected)
    assert _weighted_worst_group(ones, labels, predicted, groups)[0] == pytest.approx(worst_group_accuracy(pred))
    # Bootstrap SE of macro-F1 over 300 single images: near the brute-force bootstrap with sklearn.
    se = score_se("macro_f1", pred.logits, labels, groups)
    brute = [
        f1_score(labels[i], predicted[i], average="macro", labels=np.unique(labels[i]), zero_division=0)
        for i in (rng.integers(0, 300, 300) for _ in range(400))
    ]
    assert se == pytest.approx(float(np.std(brute, ddof=1)), rel=0.25)
    assert 0 < score_se("worst_group_accuracy", pred.logits, labels, groups) < 0.1


# ----------------------------------------------------------------------------------------------
# Winner flag and the winner's curse
# ----------------------------------------------------------------------------------------------


def _trial(number: int, value: float, se: float | None = 0.02, holdout: float | None = None) -> TrialRecord:
    return TrialRecord(number=number, state="COMPLETE", value=value, params={}, se=se, holdout=holdout)


def test_a_winner_within_one_se_is_flagged_and_the_curse_is_the_mean_drop() -> None:
    trials = [
        _trial(0, 0.70, holdout=0.69),
        _trial(1, 0.80, holdout=0.74),
        _trial(2, 0.79, holdout=0.77),
        _trial(3, 0.60, holdout=0.60),
        TrialRecord(number=4, state="PRUNED", value=0.99, params={}),
    ]
    check = check_winner(trials, top_k=3)
    assert check is not None and check.flagged and check.within_se == [2]
    assert check.margin == pytest.approx(0.01) and check.best_se == 0.02
    assert [r.number for r in check.top] == [1, 2, 0]
    assert check.winner_drop == pytest.approx(0.06)
    assert check.winners_curse == pytest.approx((0.06 + 0.02 + 0.01) / 3)
    # The held-out images' difficulty over all trials (median drop), the winner's held-out rank, agreement.
    assert check.holdout_offset == pytest.approx(0.015)
    assert check.winner_holdout_rank == 2 and check.rank_agreement == pytest.approx(0.8)
    clear = check_winner([_trial(0, 0.9, se=0.01), _trial(1, 0.8, se=0.01)], top_k=5)
    assert clear is not None and not clear.flagged and clear.within_se == [] and clear.winners_curse is None
    lines = winner_lines("autoft", SearchSummary(trials_complete=4, best_value=0.8, storage="s", winner=check), "acc")
    assert "**within one SE**: trials 2" in lines[0] and "80.0 ± 2.0 on the search's OOD-val" in lines[0]
    id_val_search = winner_lines("ft", SearchSummary(trials_complete=4, best_value=0.8, storage="s", winner=check), "a")
    assert "80.0 ± 2.0 on ID-val" in id_val_search[0]
    assert "| 1 | 80.0 ± 2.0 | 74.0 | +6.0 |" in lines
    assert any("lose +1.5 beyond it" in line and "ranks 2 on the held-out" in line for line in lines)
    assert check_winner([TrialRecord(number=0, state="FAIL", value=None, params={})], 3) is None


def test_the_objective_stores_se_and_the_held_out_score_of_the_same_weights(
    tiny_classifier: CLIPClassifier,
    train_images: ArrayImages,
    val_images: ArrayImages,
    make_images: Callable[..., ArrayImages],
    eval_tf: Callable,
) -> None:
    holdout = make_images(30, seed=7)
    space = SearchSpace.from_config(SearchConfig(losses=["ce", "l2init"], base_lr=1e-4))
    objective = TrialObjective(
        tiny_classifier,
        space,
        BatchStream(ImageBatches(train_images, eval_tf), 12, seed=0),
        val_images,
        eval_tf,
        metric="accuracy",
        inner_steps=2,
        device=CPU,
        ood_val_sources=np.arange(len(val_images)) // 2,  # pairs of copies
        holdout=holdout,
        holdout_sources=np.arange(len(holdout)),
    )
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=2)
    from autoft.evaluate import accuracy, predict

    last = study.trials[-1]
    # The model holds the last trial's weights: both scores and SEs are those weights'.
    held = predict(tiny_classifier, holdout, eval_tf)
    assert last.user_attrs[HOLDOUT_ATTR] == pytest.approx(accuracy(held))
    assert last.user_attrs[HOLDOUT_SE_ATTR] == pytest.approx(
        score_se("accuracy", held.logits, held.labels, held.groups)
    )
    scored = predict(tiny_classifier, val_images, eval_tf)
    assert last.user_attrs[SE_ATTR] == pytest.approx(
        score_se("accuracy", scored.logits, scored.labels, scored.groups, np.arange(len(val_images)) // 2)
    )


def test_a_search_on_ood_val_stores_the_se_and_the_re_scored_best_trials(tmp_path: Path) -> None:
    """prepare -> zero-shot -> search -> select-best: the winner check reaches the search result."""
    from autoft.stages import stage_search, stage_zeroshot
    from autoft.study_stages import default_storage, stage_select_best
    from conftest import tiny_pipeline_config

    config = tiny_pipeline_config(
        "digits",
        ["zeroshot", "autoft"],
        data={
            "dataset": "digits",
            "batch_size": 32,
            "ood_val": {"size": 60, "class_balanced": True, "holdout_size": 50, "rescore_top_k": 2},
            "options": {"ood_test_shifts": ["invert"], "ood_val_min_size": 60},
        },
        search={"n_trials": 3, "inner_steps": 2, "base_lr": 1e-4},
    )
    data = stage_prepare(config, tmp_path / "data")
    assert (data.ood_val_distinct, data.ood_val_examples, data.ood_val_holdout_distinct) == (60, 60, 50)
    zeroshot = stage_zeroshot(config, tmp_path / "data", tmp_path / "zeroshot")
    storage = default_storage(tmp_path, "autoft")
    Path(storage).parent.mkdir(parents=True)
    stage_search(config, tmp_path / "data", zeroshot, "autoft", storage, progress=False)
    result = stage_select_best(config, "autoft", storage, tmp_path / "autoft.json")
    complete = [t for t in result.trials if t.state == "COMPLETE"]
    assert len(complete) == 3 and all(t.se is not None and t.holdout is not None for t in complete)
    # SE of an accuracy over 60 single-copy digits: the binomial formula.
    best = max(complete, key=lambda t: t.value)  # type: ignore[arg-type, return-value]
    assert best.se == pytest.approx(math.sqrt(best.value * (1 - best.value) / 60))  # type: ignore[operator]
    winner = result.winner
    assert winner is not None and winner.top[0].number == result.best_trial and len(winner.top) == 2
    assert winner.top[0].holdout_score == best.holdout
    assert winner.winner_drop == pytest.approx(best.value - best.holdout)  # type: ignore[operator]
    assert type(result).load(tmp_path / "autoft.json").winner == winner


def test_a_crowd_within_one_se_is_listed_briefly() -> None:
    check = check_winner([_trial(i, 0.80 - 0.001 * i) for i in range(15)], top_k=5)
    assert check is not None and check.within_se == list(range(1, 15)) and len(check.top) == 5
    summary = SearchSummary(trials_complete=15, best_value=0.8, storage="s", winner=check)
    assert "trials 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 4 more are within one SE" in winner_lines("m", summary, "acc")[0]


def test_spearman_without_scipy_matches_scipy_with_ties() -> None:
    from scipy.stats import spearmanr

    from autoft.search.winner import spearman_rho

    x = [0.8, 0.8, 0.7, 0.1, 0.1, 0.5, 0.9]
    y = [0.7, 0.75, 0.7, 0.1, 0.2, 0.4, 0.6]
    assert spearman_rho(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert spearman_rho([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]) is None and spearman_rho([1.0], [2.0]) is None
