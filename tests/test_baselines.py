"""The conventional baselines (ft, flyp over an lr grid), early stopping, and how every WiSE-FT alpha is chosen."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoft.baselines import best_grid_point, grid_hparams, stage_select_grid
from autoft.config import validate_config
from autoft.contracts import EpochRecord, FinetuneSummary, PreparedData, Results, WiseFTChoice
from autoft.data.images import ArrayImages
from autoft.data.loaders import InputSettings
from autoft.data.manifests import save_array_split
from autoft.errors import ConfigError, DataError
from autoft.evaluate import accuracy, predict
from autoft.hparams import Hyperparams
from autoft.methods import grid_methods, searched_methods
from autoft.report import format_table, method_label, write_report
from autoft.stages import choose_wiseft_alpha
from autoft.train import finetune, patience_exhausted
from autoft.wiseft import interpolate
from conftest import build_tiny_classifier, synthetic_images

CPU = torch.device("cpu")
ALL = ["zeroshot", "ft", "flyp", "autoft", "ft_oodval", "autoft_ce", "ft_wiseft", "autoft_wiseft"]


# ---------------------------------------------------------------------------------------------
# config and methods
# ---------------------------------------------------------------------------------------------


def test_ft_and_flyp_are_grid_tuned_and_no_longer_searched() -> None:
    assert grid_methods(ALL) == ["ft", "flyp"]
    assert searched_methods(ALL) == ["autoft", "ft_oodval"]
    config = validate_config({"methods": ALL})
    with pytest.raises(ConfigError, match="'ft' has no search"):
        config.search_for("ft")
    with pytest.raises(ConfigError, match="'autoft' has no lr grid"):
        config.check_method("autoft", purpose="grid")
    # ft_oodval still searches lr and weight decay on OOD-val with AutoFT's trial budget.
    oodval = config.search_for("ft_oodval")
    assert oodval.losses == ["ce"] and oodval.n_trials == config.search.n_trials


def test_the_default_grid_surrounds_base_lr_and_a_given_grid_is_sorted() -> None:
    config = validate_config({"search": {"base_lr": 1e-4}})
    assert config.baseline_lr_grid == [pytest.approx(3.33e-5), 1e-4, pytest.approx(3e-4)]
    assert config.baselines.weight_decay == 0.1 and config.baselines.patience == 0
    given = validate_config({"baselines": {"lr_grid": [3e-3, 3e-4, 1e-3], "patience": 5}})
    assert given.baseline_lr_grid == [3e-4, 1e-3, 3e-3]
    hparams = grid_hparams(given, "flyp", 1e-3)
    assert hparams == Hyperparams(weights={"flyp": 1.0}, lr=1e-3, weight_decay=0.1)
    with pytest.raises(ConfigError, match=r"lr 0\.002 is not in the baselines' lr grid"):
        grid_hparams(given, "ft", 2e-3)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"baselines": {"lr_grid": []}}, "baselines.lr_grid: lr_grid needs at least one learning rate"),
        ({"baselines": {"lr_grid": [1e-3, 1e-3]}}, "baselines.lr_grid: lr_grid lists a learning rate twice"),
        ({"baselines": {"lr_grid": [-1e-3]}}, "baselines.lr_grid.0: Input should be greater than 0"),
        ({"baselines": {"patience": -1}}, "baselines.patience: Input should be greater than or equal to 0"),
        ({"baselines": {"weight_decay": -0.1}}, "baselines.weight_decay: Input should be greater than or equal"),
        ({"wiseft": {"select_on": "test"}}, "wiseft.select_on: Input should be 'ood_val', 'id_val' or 'fixed'"),
        ({"wiseft": {"fixed_alpha": 1.5}}, "wiseft.fixed_alpha: Input should be less than or equal to 1"),
    ],
)
def test_bad_baseline_and_wiseft_settings_name_the_field(section: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config(section)
    assert expected in str(error.value)


def test_every_shipped_preset_states_its_grid_and_the_smoke_grid_stays_small() -> None:
    from autoft.config import available_presets, resolve_config

    for name in available_presets():
        config = resolve_config(preset=name)
        assert config.baselines.lr_grid, f"preset {name} does not state baselines.lr_grid"
    smoke = resolve_config(preset="smoke")
    assert len(smoke.baseline_lr_grid) == 2 and smoke.finetune.epochs <= 2
    assert resolve_config(preset="digits").wiseft.select_on == "ood_val"


# ---------------------------------------------------------------------------------------------
# grid selection
# ---------------------------------------------------------------------------------------------


def _summary(method: str, lr: float, best_id_val: float, epochs: int = 3, stopped: bool = False) -> FinetuneSummary:
    history = [EpochRecord(epoch=e, train_loss=1.0, id_val=best_id_val, lr=lr) for e in range(epochs)]
    return FinetuneSummary(
        method=method,
        hparams=Hyperparams(weights={"ce": 1.0}, lr=lr, weight_decay=0.1),
        best_epoch=epochs - 1,
        best_id_val=best_id_val,
        peak_lr=lr,
        history=history,
        wiseft=WiseFTChoice(select_on="ood_val", alphas=[0.0, 1.0], values=[0.5, 0.6], best_alpha=1.0),
        stopped_early=stopped,
    )


def _point(root: Path, summary: FinetuneSummary) -> Path:
    folder = root / f"lr{summary.hparams.lr:g}"
    for name in ("model", "wiseft"):
        (folder / name).mkdir(parents=True)
        (folder / name / "model.safetensors").write_text(f"{name} of lr {summary.hparams.lr:g}")
    summary.save(folder / FinetuneSummary.FILE)
    return folder


def test_the_best_id_val_point_wins_and_ties_go_to_the_smaller_lr() -> None:
    points = [_summary("ft", 3e-3, 0.90), _summary("ft", 1e-3, 0.95), _summary("ft", 3e-4, 0.93)]
    assert best_grid_point(points) == 1
    tied = [_summary("ft", 3e-3, 0.95), _summary("ft", 1e-3, 0.95), _summary("ft", 3e-4, 0.93)]
    assert best_grid_point(tied) == 1  # 1e-3 < 3e-3


def test_select_grid_keeps_the_best_points_models_and_records_every_point(tmp_path: Path) -> None:
    config = validate_config({"methods": ALL, "baselines": {"lr_grid": [3e-4, 1e-3, 3e-3]}})
    summaries = [_summary("ft", 3e-3, 0.90, stopped=True), _summary("ft", 1e-3, 0.96), _summary("ft", 3e-4, 0.93)]
    points = [_point(tmp_path / "points", s) for s in summaries]
    out = tmp_path / "ft"
    chosen = stage_select_grid(config, "ft", points, out)
    assert chosen.hparams.lr == 1e-3 and chosen.best_id_val == 0.96
    assert (out / "model" / "model.safetensors").read_text() == "model of lr 0.001"
    assert (out / "wiseft" / "model.safetensors").read_text() == "wiseft of lr 0.001"
    written = FinetuneSummary.load(out / FinetuneSummary.FILE)
    assert [(p.lr, p.chosen, p.stopped_early) for p in written.grid] == [
        (3e-4, False, False),
        (1e-3, True, False),
        (3e-3, False, True),
    ]
    # Selecting again (a retried step) replaces the earlier copy.
    assert stage_select_grid(config, "ft", points, out).hparams.lr == 1e-3


def test_select_grid_refuses_an_incomplete_or_foreign_grid(tmp_path: Path) -> None:
    config = validate_config({"methods": ALL, "baselines": {"lr_grid": [3e-4, 1e-3]}})
    only_one = [_point(tmp_path / "a", _summary("ft", 1e-3, 0.9))]
    with pytest.raises(DataError, match=r"grid points have lrs \[0.001\], but the config's grid is"):
        stage_select_grid(config, "ft", only_one, tmp_path / "out")
    foreign = [_point(tmp_path / "b", _summary("flyp", 3e-4, 0.9)), _point(tmp_path / "c", _summary("ft", 1e-3, 0.9))]
    with pytest.raises(DataError, match="holds a fine-tune of 'flyp', not of 'ft'"):
        stage_select_grid(config, "ft", foreign, tmp_path / "out")
    assert not (tmp_path / "out" / FinetuneSummary.FILE).exists()


# ---------------------------------------------------------------------------------------------
# early stopping
# ---------------------------------------------------------------------------------------------


def test_patience_counts_epochs_since_the_best() -> None:
    assert not patience_exhausted(last_epoch=5, best_epoch=0, patience=0)  # 0 = off
    assert not patience_exhausted(last_epoch=2, best_epoch=1, patience=2)
    assert patience_exhausted(last_epoch=3, best_epoch=1, patience=2)


def _run(tmp_path: Path, patience: int, lr: float, epochs: int = 5):
    from autoft.config import FinetuneConfig
    from autoft.data.transforms import eval_transform

    model = build_tiny_classifier()
    tf = eval_transform(model.image_spec)
    return finetune(
        model,
        Hyperparams(weights={"ce": 1.0}, lr=lr, weight_decay=0.0),
        synthetic_images(32, seed=1),
        synthetic_images(24, seed=2),
        FinetuneConfig(epochs=epochs, batch_size=16, warmup_steps=0, seed=0),
        train_transform=tf,
        eval_transform=tf,
        selection_metric="accuracy",
        out_dir=tmp_path,
        device=CPU,
        progress=False,
        patience=patience,
    )


def test_early_stopping_stops_a_run_that_no_longer_improves(tmp_path: Path) -> None:
    # lr 1e-12: the weights do not move, ID-val never beats epoch 0, so the run stops after `patience` epochs.
    stopped = _run(tmp_path / "stopped", patience=2, lr=1e-12)
    assert stopped.stopped_early and [r.epoch for r in stopped.history] == [0, 1, 2] and stopped.best_epoch == 0
    full = _run(tmp_path / "full", patience=0, lr=1e-12)
    assert not full.stopped_early and len(full.history) == 5


# ---------------------------------------------------------------------------------------------
# WiSE-FT alpha: OOD-val, ID-val or fixed, the same way for every method
# ---------------------------------------------------------------------------------------------


def _prepared(folder: Path, id_val: ArrayImages, ood_val: ArrayImages) -> PreparedData:
    pairs = (("id_val", id_val), ("ood_val", ood_val))
    splits = {name: save_array_split(folder, name, images).name for name, images in pairs}
    prepared = PreparedData(
        dataset="synthetic",
        class_names=list(id_val.class_names),
        templates=["a {c}."],
        splits=splits,
        ood_val_set="inverted",
        ood_tests=[],
        ood_val_indices_hash="test",
    )
    prepared.save_in(folder)
    return prepared


def _curve(model, zs, ft, images: ArrayImages, alphas: list[float]) -> list[float]:
    from autoft.data.transforms import eval_transform

    values = []
    for alpha in alphas:
        model.load_state_dict(interpolate(zs, ft, alpha))
        model.prepare_for_eval()
        values.append(accuracy(predict(model, images, eval_transform(model.image_spec), batch_size=64)))
    return values


@pytest.mark.parametrize("select_on", ["ood_val", "id_val"])
def test_alpha_is_the_best_on_the_chosen_split(tmp_path: Path, select_on: str) -> None:
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    id_val = synthetic_images(45, seed=3)
    inverted = 255 - synthetic_images(45, seed=4).images
    ood_val = ArrayImages(images=inverted, labels=id_val.labels, class_names=id_val.class_names)
    data = _prepared(tmp_path, id_val, ood_val)
    model = build_tiny_classifier(seed=0)
    zs = {k: v.clone() for k, v in model.state_dict().items()}
    ft = {k: v.clone() for k, v in build_tiny_classifier(seed=5).state_dict().items()}
    splits = (("id_val", id_val), ("ood_val", ood_val))
    expected = {name: _curve(model, zs, ft, images, alphas) for name, images in splits}
    assert expected["id_val"] != expected["ood_val"]  # the two splits tell the choices apart
    config = validate_config({"wiseft": {"alphas": alphas, "select_on": select_on}})
    choice = choose_wiseft_alpha(config, data, model, zs, ft, InputSettings(CPU, 64, 0))
    assert choice.select_on == select_on and choice.alphas == alphas
    assert choice.values == pytest.approx(expected[select_on])
    best = max(range(len(alphas)), key=lambda i: (expected[select_on][i], alphas[i]))  # ties: the larger alpha
    assert choice.best_alpha == alphas[best]


def test_a_fixed_alpha_is_taken_without_scoring(tmp_path: Path) -> None:
    # No splits at all in this prepared data: scoring would fail, so the fixed option must not score.
    data = PreparedData(
        dataset="synthetic",
        class_names=["a"],
        templates=["{c}"],
        splits={},
        ood_val_set="x",
        ood_tests=[],
        ood_val_indices_hash="x",
    )
    config = validate_config({"wiseft": {"select_on": "fixed", "fixed_alpha": 0.3}})
    model = build_tiny_classifier()
    state = model.state_dict()
    choice = choose_wiseft_alpha(config, data, model, state, state, InputSettings(CPU, 64, 0))
    assert (choice.select_on, choice.best_alpha, choice.values) == ("fixed", 0.3, [])


# ---------------------------------------------------------------------------------------------
# report: a WiSE-FT row at alpha 1.0 says it is its base
# ---------------------------------------------------------------------------------------------


def _results(alphas: dict[str, float]) -> Results:
    from autoft.contracts import CurvePoint, MethodResult

    def row(id_test: float, ood: float, alpha: float | None = None) -> MethodResult:
        return MethodResult(id_val=id_test, id_test=id_test, ood={"s": ood}, ood_avg=ood, wiseft_alpha=alpha)

    return Results(
        preset="p",
        metric="accuracy",
        ood_val_set="v",
        methods={
            "zeroshot": row(0.8, 0.7),
            "ft": row(0.95, 0.6),
            "autoft": row(0.9, 0.72),
            "ft_wiseft": row(0.93, 0.76, alphas["ft"]),
            "autoft_wiseft": row(0.9, 0.72, alphas["autoft"]),
        },
        wiseft_curves={
            m: {
                "0.00": CurvePoint(id_test=0.8, ood_avg=0.7),
                "0.50": CurvePoint(id_test=0.93, ood_avg=0.76),
                "1.00": CurvePoint(id_test=0.95, ood_avg=0.6),
            }
            for m in ("ft", "autoft")
        },
        wiseft_select_on="ood_val",
    )


def test_report_marks_alpha_one_rows_as_their_base_and_states_how_alpha_was_chosen(tmp_path: Path) -> None:
    results = _results({"ft": 0.5, "autoft": 1.0})
    assert method_label("autoft_wiseft", results.methods["autoft_wiseft"]) == (
        "autoft_wiseft (alpha 1.0 = autoft, no interpolation)"
    )
    assert method_label("ft_wiseft", results.methods["ft_wiseft"]) == "ft_wiseft (alpha 0.5)"
    assert method_label("ft", results.methods["ft"]) == "ft"
    table = format_table(results)
    assert "| autoft_wiseft (alpha 1.0 = autoft, no interpolation) |" in table
    paths = write_report(results, {}, tmp_path)
    report = paths["markdown"].read_text()
    assert "the best alpha on OOD-val" in report and "`wiseft.select_on`" in report
    assert "Alpha 1.0 means no interpolation: autoft_wiseft is identical to its base." in report
    assert paths["WiSE-FT curves"].stat().st_size > 0
    assert "interpolation" not in format_table(_results({"ft": 0.5, "autoft": 0.7}))


# ---------------------------------------------------------------------------------------------
# `autoft step`: a grid point per call, then select-grid; misuse fails before compute with one line
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--method", "ft", "--hparams", "autoft=x.json"], "give --grid-lr LR (one point of it) and no --hparams"),
        (["--method", "ft"], "--method ft is fine-tuned over baselines.lr_grid [0.0001, 0.0003]"),
        (["--method", "ft", "--grid-lr", "0.002"], "lr 0.002 is not in the baselines' lr grid [0.0001, 0.0003]"),
        (["--method", "autoft", "--grid-lr", "0.0001"], "give --hparams, not --grid-lr"),
    ],
)
def test_step_finetune_takes_a_grid_lr_for_ft_and_hparams_for_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    from autoft.cli import main

    base = ["step", "finetune", "--preset", "smoke", "--data", str(tmp_path / "data"), "--zeroshot", str(tmp_path)]
    assert main([*base, *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert not (tmp_path / "out").exists()  # refused before any compute or output


def test_step_select_grid_writes_the_chosen_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autoft.cli import main

    points = [_point(tmp_path, _summary("flyp", lr, value)) for lr, value in ((1e-4, 0.91), (3e-4, 0.93))]
    argv = ["step", "select-grid", "--preset", "smoke", "--method", "flyp", "--out", str(tmp_path / "flyp")]
    assert main([*argv, *(item for p in points for item in ("--point", str(p)))]) == 0
    assert "flyp: chose lr 0.0003" in capsys.readouterr().out
    assert FinetuneSummary.load(tmp_path / "flyp" / FinetuneSummary.FILE).hparams.lr == 3e-4
    assert main([*argv[:-2], "--method", "autoft", "--out", str(tmp_path / "x"), "--point", str(points[0])]) == 2
    assert "'autoft' has no lr grid" in capsys.readouterr().err
