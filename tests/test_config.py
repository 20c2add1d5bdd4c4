"""The config schema at the edge: unknown keys, bad values and `--set` overrides fail with the field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoft.config import AutoFTConfig, apply_overrides, config_to_yaml, resolve_config, save_config, validate_config
from autoft.errors import ConfigError
from autoft.hparams import LOSS_NAMES


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    return str(info.value)


def test_defaults_follow_the_paper() -> None:
    config = validate_config({})
    assert config.search.losses == list(LOSS_NAMES)
    assert config.search.anchor == "ce"
    assert (config.search.weight_bounds.low, config.search.weight_bounds.high) == (1e-4, 10.0)
    assert (config.search.weight_decay.low, config.search.weight_decay.high) == (0.0, 1.0)
    assert config.search.lr_factor == 100.0
    assert config.search.search_seed is False
    assert config.wiseft.alphas == [round(0.1 * i, 1) for i in range(11)]
    assert config.model_selection_metric == config.metric == "accuracy"


def test_unknown_keys_are_rejected_with_their_field_path() -> None:
    message = _error({"search": {"n_trails": 5}, "finetune": {"epochs": 2, "lr_peak": 1.0}})
    assert "search.n_trails: unknown key" in message
    assert "finetune.lr_peak: unknown key" in message
    assert "finetune.epochs" not in message  # valid siblings are not blamed
    assert "weight_bounds.lo: unknown key" in _error({"search": {"weight_bounds": {"lo": 1e-3, "high": 1.0}}})
    assert "<root>" not in _error({"serach": {}}) and "serach: unknown key" in _error({"serach": {}})


def test_inverted_bounds_are_rejected() -> None:
    message = _error({"search": {"weight_bounds": {"low": 5.0, "high": 1.0}}})
    assert "search.weight_bounds" in message and "inverted bounds: low=5.0 > high=1.0" in message
    message = _error({"search": {"weight_decay": {"low": 0.5, "high": 0.1}}})
    assert "search.weight_decay" in message and "inverted" in message


def test_log_uniform_weight_bounds_must_be_positive() -> None:
    message = _error({"search": {"weight_bounds_per_term": {"hinge": {"low": 0.0, "high": 1.0}}}})
    assert "hinge: loss weights are log-uniform, so low must be > 0" in message


@pytest.mark.parametrize("lr", [0, -1e-5])
def test_base_lr_must_be_positive(lr: float) -> None:
    message = _error({"search": {"base_lr": lr}})
    assert "search.base_lr" in message and "greater than 0" in message


def test_finetune_lr_override_must_be_positive() -> None:
    assert "finetune.lr" in _error({"finetune": {"lr": 0.0}})


def test_zero_trials_are_rejected() -> None:
    message = _error({"search": {"n_trials": 0}})
    assert "search.n_trials" in message and "greater than or equal to 1" in message


def test_unknown_loss_names_and_a_missing_anchor_are_rejected() -> None:
    message = _error({"search": {"losses": ["ce", "focal"]}})
    assert "unknown loss names ['focal']" in message and "'l2init'" in message  # names the allowed values
    assert "duplicate loss names" in _error({"search": {"losses": ["ce", "ce"]}})
    assert "anchor 'ce' must be one of the selected losses" in _error({"search": {"losses": ["hinge"]}})
    assert "unselected losses ['flyp']" in _error(
        {"search": {"losses": ["ce"], "weight_bounds_per_term": {"flyp": {"low": 1e-3, "high": 1.0}}}}
    )


def test_other_field_constraints() -> None:
    assert "divisible by grad_accum 3" in _error({"finetune": {"batch_size": 64, "grad_accum": 3}})
    assert "within [0, 1]" in _error({"wiseft": {"alphas": [0.5, 1.5]}})
    assert "'{c}' class slot" in _error({"model": {"templates": ["a photo"]}})
    message = _error({"search": {"dcm_sign": "inverse"}})
    assert "search.dcm_sign" in message and "'inverse'" in message
    assert validate_config({"wiseft": {"alphas": [1.0, 0.0, 0.5, 0.5]}}).wiseft.alphas == [0.0, 0.5, 1.0]


def test_overrides_are_parsed_with_yaml_rules() -> None:
    raw = {"search": {"n_trials": 100}, "model": {"name": "ViT-B-16"}}
    result = apply_overrides(
        raw,
        [
            "search.n_trials=20",
            "search.base_lr=1e-5",
            "search.losses=[ce,hinge]",
            "search.weight_bounds.low=0.001",
            "finetune.lr=",
            "model.pretrained=openai",
            "options.noise=-2E-3",
        ],
    )
    assert result["search"]["n_trials"] == 20
    assert isinstance(result["search"]["base_lr"], float) and result["search"]["base_lr"] == 1e-5
    assert result["search"]["losses"] == ["ce", "hinge"]
    assert result["search"]["weight_bounds"] == {"low": 0.001}
    assert result["finetune"]["lr"] == ""
    assert result["model"] == {"name": "ViT-B-16", "pretrained": "openai"}
    assert result["options"]["noise"] == -2e-3  # a float even where the schema does not coerce (Any)
    assert raw == {"search": {"n_trials": 100}, "model": {"name": "ViT-B-16"}}  # the input is not mutated


@pytest.mark.parametrize("override", ["search.n_trials", "=5", " =5"])
def test_malformed_overrides_are_rejected(override: str) -> None:
    with pytest.raises(ConfigError, match="use KEY=VALUE"):
        apply_overrides({}, [override])


def test_override_through_a_scalar_is_rejected() -> None:
    with pytest.raises(ConfigError, match="'n_trials' is not a section"):
        apply_overrides({"search": {"n_trials": 5}}, ["search.n_trials.low=1"])


def test_load_config_applies_overrides_over_the_file_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "preset.yaml"
    path.write_text("preset: tiny\nsearch:\n  n_trials: 7\n  losses: [ce, hinge, l2init]\nfinetune:\n  epochs: 3\n")
    config = resolve_config(config_file=path, overrides=["search.n_trials=3", "finetune.warmup_steps=0"])
    assert config.preset == "tiny"
    assert config.search.n_trials == 3
    assert config.search.losses == ["ce", "hinge", "l2init"]
    assert (config.finetune.epochs, config.finetune.warmup_steps) == (3, 0)
    with pytest.raises(ConfigError, match=r"search\.n_trials: unknown key|search\.n_trial: unknown key"):
        resolve_config(config_file=path, overrides=["search.n_trial=3"])
    with pytest.raises(ConfigError, match=r"search\.n_trials"):
        resolve_config(config_file=path, overrides=["search.n_trials=zero"])


def test_load_config_reports_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config(config_file=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        resolve_config(config_file=bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        resolve_config(config_file=listing)


def test_saved_config_loads_back_identically(tmp_path: Path) -> None:
    config = resolve_config(overrides=["search.n_trials=11", "search.losses=[ce,flyp,l1init]", "finetune.lr=3e-4"])
    path = save_config(config, tmp_path / "resolved.yaml")
    again = resolve_config(config_file=path)
    assert isinstance(again, AutoFTConfig)
    assert again == config


def test_one_root_seed_drives_every_component_unless_one_is_set() -> None:
    config = resolve_config(preset="digits", overrides=["seed=3"])
    assert (config.search_seed, config.finetune_seed, config.ood_val_seed) == (3, 3, 3)
    assert config.search_for("autoft").seed == 3
    pinned = resolve_config(preset="digits", overrides=["seed=3", "search.seed=7", "finetune.seed=8"])
    assert (pinned.search_seed, pinned.finetune_seed, pinned.ood_val_seed) == (7, 8, 3)
    assert "seed: null" in config_to_yaml(config), "the saved config keeps 'derive from the root seed'"


def test_methods_and_dataset_options_are_checked_by_the_schema() -> None:
    with pytest.raises(ConfigError, match=r"methods: unknown methods \['bogus'\]"):
        resolve_config(preset="digits", overrides=["methods=[zeroshot,bogus]"])
    with pytest.raises(ConfigError, match="'ft_wiseft' needs 'ft'"):
        resolve_config(overrides=["methods=[zeroshot,ft_wiseft]"])
    with pytest.raises(ConfigError, match=r"data\.options: ood_test_shifts: unknown \['fog'\]"):
        resolve_config(overrides=["data.options.ood_test_shifts=[fog]"])
    options = resolve_config(overrides=["data.dataset=cifar10", "data.options.cifar10c_severity=3"]).data.options
    assert type(options).__name__ == "CifarOptions" and options.cifar10c_severity == 3


def test_types_are_strict_and_an_empty_config_is_an_error(tmp_path: Path) -> None:
    for bad in ("search.n_trials=yes", "search.n_trials=2.5", "search.base_lr=true"):
        with pytest.raises(ConfigError, match="search"):
            resolve_config(overrides=[bad])
    assert resolve_config(overrides=["search.base_lr=1e-5"]).search.base_lr == 1e-5
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_config(config_file=empty)
    with pytest.raises(ConfigError, match="is empty"):
        resolve_config(text="")
