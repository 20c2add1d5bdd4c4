"""Final fine-tuning on several processes (torch DDP, gloo on CPU): the one-process weights, a killed
2-process run that resumes, ID-val and the WiSE-FT sweep evaluated sharded across the ranks.

The 2-process run goes through the CLI (`autoft step finetune --nproc 2`, which starts torchrun), is
SIGKILLed after its first epoch checkpoint, and is resumed through the library (`stage_finetune(...,
nproc=2, resume=True)`); meanwhile this process fine-tunes the same run alone. Tiny model, 2 epochs of 7 steps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from autoft.config import FinetuneConfig, save_config
from autoft.contracts import FinetuneSummary, SearchResult
from autoft.distributed import Dist, resolve_nproc
from autoft.errors import ConfigError
from autoft.hparams import Hyperparams
from autoft.stages import stage_finetune, stage_prepare, stage_zeroshot
from autoft.train import CHECKPOINT_DIR, TRAIN_STATE, FinetuneLoop
from conftest import tiny_pipeline_config

REPO = Path(__file__).resolve().parents[1]
# Every kind of term: per-example (ce, hinge), batch-level (flyp: gathered features), parameter (l2init).
HPARAMS = Hyperparams({"ce": 1.0, "hinge": 0.2, "flyp": 0.5, "l2init": 1.0}, lr=1e-3, weight_decay=0.1)


class Recorder:
    """A TrainingObserver that keeps every call."""

    def __init__(self) -> None:
        self.steps: dict[int, dict[str, float]] = {}
        self.epochs: dict[int, dict[str, float]] = {}

    def on_step(self, step: int, values) -> None:
        self.steps[step] = dict(values)

    def on_epoch(self, epoch: int, values) -> None:
        self.epochs[epoch] = dict(values)


def _config():
    return tiny_pipeline_config(
        "ddp-test",
        ["zeroshot", "autoft"],
        finetune={"epochs": 2, "batch_size": 64, "warmup_steps": 4},
        wiseft={"alphas": [0.0, 0.5, 1.0]},
    )


def _assert_same_weights(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours.keys() == theirs.keys()
    for name in ours:
        a, b = ours[name], theirs[name]
        if name.endswith("attn.in_proj_bias"):
            # The key bias has a zero gradient in exact arithmetic (softmax ignores a shift shared by all
            # keys), so its float noise differs with the summation order and Adam scales noise up to
            # full-size steps: compare the query and value biases only (as the accumulation test does).
            width = a.numel() // 3
            keep = torch.cat([torch.arange(width), torch.arange(2 * width, 3 * width)])
            a, b = a[keep], b[keep]
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5, msg=name)


def test_two_processes_match_one_and_a_killed_run_resumes(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config()
    data, zeroshot = tmp_path / "data", tmp_path / "zeroshot"
    stage_prepare(config, data)
    stage_zeroshot(config, data, zeroshot)
    config_file = save_config(config, tmp_path / "config.yaml")
    hparams_file = SearchResult(
        method="autoft",
        hparams=HPARAMS,
        best_value=0.5,
        best_trial=0,
        trials_complete=1,
        storage="test",
        study_name="test",
    ).save(tmp_path / "autoft.json")

    ddp_dir = tmp_path / "ddp"
    state_file = ddp_dir / "train" / CHECKPOINT_DIR / TRAIN_STATE
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO / 'src'}:{REPO}"}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the resumed launch's ranks too
    command = [
        *(sys.executable, "-m", "autoft.cli", "step", "finetune", "--config", str(config_file)),
        *("--data", str(data), "--zeroshot", str(zeroshot), "--method", "autoft"),
        *("--hparams", f"autoft={hparams_file}", "--out", str(ddp_dir), "--nproc", "2"),
    ]
    victim = subprocess.Popen(command, env=env, start_new_session=True, stderr=subprocess.PIPE, text=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single_curves = Recorder()
        single = stage_finetune(
            config, data, zeroshot, "autoft", HPARAMS, tmp_path / "single", progress=False, observer=single_curves
        )
        deadline = time.monotonic() + 120
        while not state_file.exists() and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(victim.pid, signal.SIGKILL)  # torchrun and both ranks
        victim.wait(timeout=30)
    finally:
        torch.set_num_threads(threads)
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
    assert state_file.exists(), f"killed before the first checkpoint: {victim.stderr.read() if victim.stderr else ''}"
    payload = torch.load(state_file, map_location="cpu", weights_only=True)
    assert payload["epoch"] == 0, "the kill must land during epoch 2"
    assert not (ddp_dir / FinetuneSummary.FILE).exists()

    capfd.readouterr()
    curves = Recorder()
    resumed = stage_finetune(config, data, zeroshot, "autoft", HPARAMS, ddp_dir, resume=True, nproc=2, observer=curves)
    printed = capfd.readouterr().out
    assert "epoch 1:" not in printed and "epoch 2:" in printed  # it resumed: it did not start over

    assert single.processes == 1 and resumed.processes == 2
    # The ranks' observer calls reach the launcher's observer: the resumed epoch's steps and the epoch itself.
    assert list(curves.epochs) == [1] and list(single_curves.epochs) == [0, 1]
    assert curves.epochs[1] == pytest.approx(single_curves.epochs[1], rel=1e-3, abs=1e-6)
    resumed_steps = [step for step in single_curves.steps if step > len(single_curves.steps) // 2]
    assert sorted(curves.steps) == resumed_steps
    assert [curves.steps[k]["lr"] for k in resumed_steps] == [single_curves.steps[k]["lr"] for k in resumed_steps]
    assert [r.id_val for r in resumed.history] == [r.id_val for r in single.history]  # sharded ID-val
    for ours, theirs in zip(resumed.history, single.history, strict=True):
        assert ours.train_loss == pytest.approx(theirs.train_loss, rel=1e-4)
        assert ours.terms == pytest.approx(theirs.terms, rel=1e-3, abs=1e-6)
    assert resumed.best_epoch == single.best_epoch
    assert resumed.wiseft.values == single.wiseft.values and resumed.wiseft.best_alpha == single.wiseft.best_alpha
    for folder in ("model", "wiseft"):
        ours = load_file(str(ddp_dir / folder / "model.safetensors"))
        theirs = load_file(str(tmp_path / "single" / folder / "model.safetensors"))
        _assert_same_weights(ours, theirs)
    start = load_file(str(zeroshot / "model.safetensors"))
    assert not torch.equal(start["head.weight"], ours["head.weight"])  # it trained


def test_the_micro_batch_must_split_over_the_processes(tiny_classifier) -> None:
    config = FinetuneConfig(epochs=1, batch_size=30, grad_accum=2, warmup_steps=0, seed=0)
    with pytest.raises(ConfigError, match="15 examples per micro-batch do not split over 2 processes"):
        FinetuneLoop(tiny_classifier, HPARAMS, config, 10, device=torch.device("cpu"), dist=Dist(0, 2))


def test_nproc_is_a_positive_count_or_auto() -> None:
    assert resolve_nproc("3") == 3
    assert resolve_nproc("auto") == max(torch.cuda.device_count(), 1)
    for bad in ("0", "-2", "two"):
        with pytest.raises(ConfigError, match="--nproc must be a positive integer or 'auto'"):
            resolve_nproc(bad)
