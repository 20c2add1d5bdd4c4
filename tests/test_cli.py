"""The `autoft` command line: help, config resolution, and bad input failing before compute."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from autoft.cli import EXIT_USER_ERROR, main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "autoft.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=env,
        timeout=120,
    )


def test_help_lists_every_stage() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("run", "prepare", "zeroshot", "search", "select-best", "finetune", "evaluate", "report", "step"):
        assert command in result.stdout


def test_config_show_applies_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["config", "show", "--set", "search.n_trials=7", "--set", "search.base_lr=3e-4"])
    assert code == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["search"]["n_trials"] == 7
    assert shown["search"]["base_lr"] == pytest.approx(3e-4)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("search.losses=[ce,focal]", "unknown loss names ['focal']"),
        ("search.weight_bounds={low: 10, high: 0.1}", "inverted bounds"),
        ("search.base_lr=0", "search.base_lr"),
        ("search.base_lr=-1e-5", "search.base_lr"),
        ("search.n_trials=0", "search.n_trials"),
        ("search.losses=[hinge,entropy]", "anchor 'ce' must be one of the selected losses"),
        ("data.dataset=mnist", "unknown dataset 'mnist'"),
        ("finetune.epohcs=3", "finetune.epohcs: unknown key"),
        ("model.head_mode=both", "model.head_mode"),
        ("data.ood_val.size=0", "data.ood_val.size"),
    ],
)
def test_bad_config_is_rejected_with_the_field(override: str, expected: str, capsys: pytest.CaptureFixture) -> None:
    code = main(["config", "show", "--set", override])
    assert code == EXIT_USER_ERROR
    assert expected in capsys.readouterr().err


def test_malformed_override_and_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "--set", "search.n_trials"]) == EXIT_USER_ERROR
    assert "use KEY=VALUE" in capsys.readouterr().err
    assert main(["config", "show", "--config", str(tmp_path / "nope.yaml")]) == EXIT_USER_ERROR
    assert "config file not found" in capsys.readouterr().err
    assert main(["config", "show", "--preset", "no-such-preset"]) == EXIT_USER_ERROR
    assert "unknown preset" in capsys.readouterr().err


def test_corrupt_checkpoint_fails_before_compute(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_card.json").write_text(
        '{"schema": "autoft.model_card/v1", "model_name": "autoft-tiny-vit",'
        ' "class_names": ["a", "b"], "templates": ["{c}"]}'
    )
    (model / "model.safetensors").write_bytes(b"\x00garbage, not a safetensors file")
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    Image.new("RGB", (32, 32), "white").save(images / "0.png")
    out = tmp_path / "eval.json"
    result = run_cli("evaluate", "--eval-folder", str(tmp_path / "images"), "--model", f"m={model}", "--out", str(out))
    assert result.returncode == EXIT_USER_ERROR
    assert "corrupt or unsafe checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_prepared_data_names_the_step(tmp_path: Path) -> None:
    result = run_cli("zeroshot", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "zs"))
    assert result.returncode == EXIT_USER_ERROR
    assert "run `autoft step prepare`" in result.stderr


def test_local_runs_share_one_mlflow_db_beside_the_run_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autoft.cli import with_shared_local_tracking
    from autoft.config import resolve_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = resolve_config(preset="smoke")
    first = with_shared_local_tracking(config, tmp_path / "runs" / "smoke-1")
    second = with_shared_local_tracking(config, tmp_path / "runs" / "smoke-2")
    # `make mlflow-ui` reads runs/mlflow.db: both runs must land there, and the input stays untouched.
    assert first.tracking.mlflow_uri == second.tracking.mlflow_uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert config.tracking.mlflow_uri == ""

    configured = config.model_copy(deep=True)
    configured.tracking.mlflow_uri = "http://127.0.0.1:5000"
    assert with_shared_local_tracking(configured, tmp_path / "x").tracking.mlflow_uri == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert with_shared_local_tracking(config, tmp_path / "x").tracking.mlflow_uri == ""


def test_bench_runs_a_benchmark_script_and_passes_its_exit_code() -> None:
    listed = run_cli("bench", "loss_terms", "--help")
    assert listed.returncode == 0 and "usage: loss_terms.py" in listed.stdout
    # An argument the benchmark rejects: its own exit code (argparse: 2) comes back through autoft.
    rejected = run_cli("bench", "robustness", "--no-such-option")
    assert rejected.returncode == 2 and "unrecognized arguments: --no-such-option" in rejected.stderr
    unknown = run_cli("bench", "nope")
    assert unknown.returncode == EXIT_USER_ERROR
    shipped = sorted(path.stem for path in (REPO / "bench").glob("*.py"))
    assert {"loss_terms", "robustness", "engine"} <= set(shipped)
    assert f"unknown benchmark 'nope'; choose one of {shipped}" in unknown.stderr
