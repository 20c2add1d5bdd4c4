"""Inner loop and final fine-tuning: the searched lr reaches the optimizer, theta0 is a clone, NaNs
stop a trial, the schedule is warmup + cosine, and a killed run resumes to the same weights."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import load_file

import autoft.train as train_module
from autoft.config import FinetuneConfig
from autoft.data.images import ArrayImages
from autoft.data.loaders import BatchStream, ImageBatches
from autoft.losses import WeightedObjective, l2_init
from autoft.models.classifier import CLIPClassifier
from autoft.train import (
    ADAM_BETAS,
    CHECKPOINT_DIR,
    TRAIN_STATE,
    Hyperparams,
    NonFiniteLossError,
    finetune,
    inner_loop,
    prepare_objective,
    warmup_cosine,
)

CPU = torch.device("cpu")
TESTS_DIR = Path(__file__).resolve().parent


def _zeroshot_state(model: CLIPClassifier) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _stream(images: ArrayImages, transform: Callable, batch_size: int = 12, seed: int = 0) -> BatchStream:
    return BatchStream(ImageBatches(images, transform), batch_size, seed=seed)


class RecordingObjective(WeightedObjective):
    """The real objective, recording each call's term values (patched into autoft.train)."""

    calls: ClassVar[list[dict[str, float]]] = []

    def __call__(self, batch, params=(), anchor=None):
        total, values = super().__call__(batch, params, anchor)
        RecordingObjective.calls.append({name: float(v) for name, v in values.items()})
        return total, values


@pytest.fixture
def recording_objective(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, float]]:
    RecordingObjective.calls = []
    monkeypatch.setattr(train_module, "WeightedObjective", RecordingObjective)
    return RecordingObjective.calls


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that records the lr of each step it takes (patched into autoft.train)."""

    step_lrs: ClassVar[list[float]] = []

    def step(self, closure=None):
        RecordingAdamW.step_lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


@pytest.fixture
def recording_adamw(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    RecordingAdamW.step_lrs = []
    monkeypatch.setattr(train_module, "AdamW", RecordingAdamW)
    return RecordingAdamW.step_lrs


# ---------------------------------------------------------------------------------------------
# Hyperparams
# ---------------------------------------------------------------------------------------------


def test_hyperparams_round_trip_and_validation() -> None:
    hp = Hyperparams(weights={"ce": 1.0, "l2init": 0.3}, lr=2e-4, weight_decay=0.1, seed=7)
    assert Hyperparams.from_dict(json.loads(json.dumps(hp.to_dict()))) == hp
    for bad_lr in (0.0, -1e-5, math.nan, math.inf):
        with pytest.raises(ValueError, match="learning rate must be a positive finite number"):
            Hyperparams.from_dict({**hp.to_dict(), "lr": bad_lr})
    with pytest.raises(ValueError, match="weight decay must be >= 0"):
        Hyperparams.from_dict({**hp.to_dict(), "weight_decay": -0.1})


# ---------------------------------------------------------------------------------------------
# prepare_objective and theta0
# ---------------------------------------------------------------------------------------------


def test_prepare_objective_trains_the_text_tower_only_for_flyp(tiny_classifier: CLIPClassifier) -> None:
    _, params, anchor = prepare_objective(tiny_classifier, Hyperparams({"ce": 1.0}, 1e-4, 0.0), "reference")
    names = {name for name, p in tiny_classifier.named_parameters() if p.requires_grad}
    assert anchor is None
    assert names and all(n.startswith(("clip.visual.", "head.")) for n in names)
    assert {"head.weight", "head.bias"} <= names
    assert len(params) == len(names)
    _, flyp_params, _ = prepare_objective(
        tiny_classifier, Hyperparams({"ce": 1.0, "flyp": 1.0}, 1e-4, 0.0), "reference"
    )
    flyp_names = {name for name, p in tiny_classifier.named_parameters() if p.requires_grad}
    assert {"clip.token_embedding.weight", "clip.logit_scale"} <= flyp_names
    assert len(flyp_params) > len(params)


def test_prepare_objective_refuses_an_anchor_that_aliases_the_model(tiny_classifier: CLIPClassifier) -> None:
    hp = Hyperparams({"ce": 1.0, "l2init": 1.0}, 1e-3, 0.0)
    with pytest.raises(ValueError, match="theta0 would alias the live parameters"):
        prepare_objective(tiny_classifier, hp, "reference", anchor_state=tiny_classifier.state_dict())


@pytest.mark.parametrize("cached", [False, True])
def test_prepare_objective_anchor_is_a_clone(tiny_classifier: CLIPClassifier, cached: bool) -> None:
    zeroshot = _zeroshot_state(tiny_classifier)
    hp = Hyperparams({"ce": 1.0, "l2init": 1.0}, 1e-3, 0.0)
    _, params, anchor = prepare_objective(tiny_classifier, hp, "reference", zeroshot if cached else None)
    assert anchor is not None
    assert float(l2_init(params, anchor).detach()) == 0.0
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    names = [n for n, p in tiny_classifier.named_parameters() if p.requires_grad]
    count = sum(p.numel() for p in params)
    hand = sum(float(((p.detach() - zeroshot[n]) ** 2).sum()) for n, p in zip(names, params, strict=True)) / count
    assert hand > 0
    assert float(l2_init(params, anchor).detach()) == pytest.approx(hand, rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Inner loop
# ---------------------------------------------------------------------------------------------


def test_inner_loop_optimizer_has_the_trials_lr_and_weight_decay(
    tiny_classifier: CLIPClassifier, train_images: ArrayImages, train_tf: Callable
) -> None:
    zeroshot = _zeroshot_state(tiny_classifier)
    hp = Hyperparams({"ce": 1.0, "hinge": 0.2}, lr=3.7e-4, weight_decay=0.25)
    optimizer = inner_loop(tiny_classifier, zeroshot, hp, _stream(train_images, train_tf), 2, device=CPU)
    group = optimizer.param_groups[0]
    assert len(optimizer.param_groups) == 1
    assert group["lr"] == 3.7e-4
    assert group["weight_decay"] == 0.25
    assert tuple(group["betas"]) == ADAM_BETAS
    trainable = {id(p) for p in tiny_classifier.parameters() if p.requires_grad}
    assert {id(p) for p in group["params"]} == trainable


@pytest.mark.parametrize("lr", [1e-3, 1e-4])
def test_inner_loop_first_step_size_is_the_trials_lr(
    tiny_classifier: CLIPClassifier, train_images: ArrayImages, train_tf: Callable, lr: float
) -> None:
    # AdamW's first step moves each weight by lr * g / (|g| + eps): at most lr, close to lr.
    zeroshot = _zeroshot_state(tiny_classifier)
    hp = Hyperparams({"ce": 1.0}, lr=lr, weight_decay=0.0)
    inner_loop(tiny_classifier, zeroshot, hp, _stream(train_images, train_tf), 1, device=CPU)
    rounding = 2 * torch.finfo(torch.float32).eps  # float32 rounding of theta0 + delta
    largest, excess = 0.0, -math.inf
    for name, param in tiny_classifier.named_parameters():
        delta = (param.detach() - zeroshot[name]).abs()
        largest = max(largest, float(delta.max()))
        excess = max(excess, float((delta - lr - rounding * zeroshot[name].abs()).max()))
    assert 0.9 * lr < largest
    assert excess <= 1e-3 * lr


def test_inner_loop_resets_to_the_zero_shot_weights_every_trial(
    tiny_classifier: CLIPClassifier, train_images: ArrayImages, train_tf: Callable
) -> None:
    zeroshot = _zeroshot_state(tiny_classifier)
    untouched = {k: v.clone() for k, v in zeroshot.items()}
    stream = _stream(train_images, train_tf)
    inner_loop(tiny_classifier, zeroshot, Hyperparams({"ce": 1.0, "flyp": 0.5}, 1e-3, 0.1), stream, 2, device=CPU)
    moved = tiny_classifier.state_dict()
    assert not torch.equal(moved["head.weight"], zeroshot["head.weight"])
    assert not torch.equal(moved["clip.token_embedding.weight"], zeroshot["clip.token_embedding.weight"])
    inner_loop(tiny_classifier, zeroshot, Hyperparams({"ce": 1.0}, 1e-3, 0.1), stream, 0, device=CPU)
    for key, value in tiny_classifier.state_dict().items():
        assert torch.equal(value, zeroshot[key]), key
    # The cached zero-shot state itself was never touched by training.
    for key, value in untouched.items():
        assert torch.equal(zeroshot[key], value), key


def test_inner_loop_anchor_is_a_clone_so_l2init_grows(
    tiny_classifier: CLIPClassifier,
    train_images: ArrayImages,
    train_tf: Callable,
    recording_objective: list[dict[str, float]],
) -> None:
    zeroshot = _zeroshot_state(tiny_classifier)
    hp = Hyperparams({"ce": 1.0, "l2init": 1.0, "l1init": 1.0}, 1e-3, 0.0)
    inner_loop(tiny_classifier, zeroshot, hp, _stream(train_images, train_tf), 3, device=CPU)
    assert len(recording_objective) == 3
    assert recording_objective[0]["l2init"] == 0.0 and recording_objective[0]["l1init"] == 0.0
    assert 0 < recording_objective[1]["l2init"] < recording_objective[2]["l2init"]
    assert 0 < recording_objective[1]["l1init"] < recording_objective[2]["l1init"]


def test_inner_loop_with_a_huge_lr_raises_non_finite_loss(
    tiny_classifier: CLIPClassifier, train_images: ArrayImages, train_tf: Callable
) -> None:
    zeroshot = _zeroshot_state(tiny_classifier)
    hp = Hyperparams({"ce": 1.0}, lr=1e30, weight_decay=0.0)
    with pytest.raises(NonFiniteLossError, match="loss is nan at step"):
        inner_loop(tiny_classifier, zeroshot, hp, _stream(train_images, train_tf), 5, device=CPU)


def test_inner_loop_with_an_injected_nan_raises_before_any_step(
    tiny_classifier: CLIPClassifier, train_images: ArrayImages, train_tf: Callable
) -> None:
    zeroshot = _zeroshot_state(tiny_classifier)
    poisoned = dict(zeroshot)
    poisoned["head.bias"] = torch.full_like(zeroshot["head.bias"], math.nan)
    hp = Hyperparams({"ce": 1.0}, lr=1e-4, weight_decay=0.0)
    with pytest.raises(NonFiniteLossError, match="at step 0"):
        inner_loop(tiny_classifier, poisoned, hp, _stream(train_images, train_tf), 3, device=CPU)
    # The next trial starts from the clean cached state and is unaffected.
    inner_loop(tiny_classifier, zeroshot, hp, _stream(train_images, train_tf), 1, device=CPU)
    assert torch.isfinite(tiny_classifier.head.bias).all()


# ---------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------


def _schedule(peak: float, warmup: int, total: int) -> tuple[list[float], float]:
    """The lr each optimizer step uses under warmup_cosine, and the lr left after the last step."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW(params, lr=peak)
    scheduler = warmup_cosine(optimizer, warmup, total)
    used = []
    for _ in range(total):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used, optimizer.param_groups[0]["lr"]


def _expected_schedule(peak: float, warmup: int, total: int) -> list[float]:
    warmup = min(warmup, total - 1)
    ramp = [peak * (k + 1) / (warmup + 1) for k in range(warmup)]
    span = total - warmup
    return ramp + [peak * (1 + math.cos(math.pi * j / span)) / 2 for j in range(span)]


@pytest.mark.parametrize(("warmup", "total"), [(4, 12), (0, 6), (30, 8), (1, 2)])
def test_warmup_cosine_peaks_at_the_optimizer_lr(warmup: int, total: int) -> None:
    peak = 3e-4
    used, after = _schedule(peak, warmup, total)
    assert used == pytest.approx(_expected_schedule(peak, warmup, total), rel=1e-9, abs=1e-15)
    assert max(used) == pytest.approx(peak, rel=1e-12)
    effective_warmup = min(warmup, total - 1)
    assert used.index(max(used)) == effective_warmup
    ramp = used[: effective_warmup + 1]
    assert all(b > a for a, b in itertools.pairwise(ramp))
    steps = [b - a for a, b in itertools.pairwise(ramp)]
    assert steps == pytest.approx([peak / (effective_warmup + 1)] * len(steps), rel=1e-9)  # linear
    decay = used[effective_warmup:]
    assert all(b < a for a, b in itertools.pairwise(decay))  # cosine decays
    assert after == pytest.approx(0.0, abs=1e-15)


# ---------------------------------------------------------------------------------------------
# Final fine-tuning
# ---------------------------------------------------------------------------------------------


def _finetune(
    model: CLIPClassifier,
    hp: Hyperparams,
    train_images: ArrayImages,
    val_images: ArrayImages,
    tf: Callable,
    out_dir: Path,
    **config: object,
):
    settings = {"epochs": 2, "batch_size": 16, "warmup_steps": 2, "seed": 0, **config}
    return finetune(
        model,
        hp,
        train_images,
        val_images,
        FinetuneConfig(**settings),
        train_transform=tf,
        eval_transform=tf,
        selection_metric="accuracy",
        out_dir=out_dir,
        device=CPU,
        progress=False,
    )


def test_finetune_peak_lr_is_the_searched_lr(
    tiny_classifier: CLIPClassifier,
    train_images: ArrayImages,
    val_images: ArrayImages,
    eval_tf: Callable,
    tmp_path: Path,
    recording_adamw: list[float],
) -> None:
    hp = Hyperparams({"ce": 1.0, "l2init": 1.0}, lr=2.5e-4, weight_decay=0.1)
    result = _finetune(tiny_classifier, hp, train_images, val_images, eval_tf, tmp_path)
    # 48 examples / batch 16 = 3 steps per epoch, 2 epochs, warmup 2.
    assert result.peak_lr == 2.5e-4
    assert recording_adamw == pytest.approx(_expected_schedule(2.5e-4, 2, 6), rel=1e-9)
    assert max(recording_adamw) == pytest.approx(2.5e-4, rel=1e-12)
    assert [r.epoch for r in result.history] == [0, 1]
    assert result.history[0].lr == pytest.approx(_expected_schedule(2.5e-4, 2, 6)[3], rel=1e-9)
    assert result.history[1].lr == pytest.approx(0.0, abs=1e-15)
    # theta0 is a clone in the final run: the anchor term is positive once weights move.
    assert all(r.terms["l2init"] > 0 for r in result.history)
    assert all(r.terms["ce"] > 0 and math.isfinite(r.train_loss) for r in result.history)
    best = max(result.history, key=lambda r: r.id_val)
    assert result.best_value == best.id_val and 0.0 <= result.best_value <= 1.0
    assert result.best_epoch == min(r.epoch for r in result.history if r.id_val == best.id_val)
    assert result.best_state_path.is_file()
    saved = json.loads((tmp_path / "history.json").read_text())
    assert [item["lr"] for item in saved] == [r.lr for r in result.history]


def test_finetune_lr_override_replaces_the_searched_lr(
    tiny_classifier: CLIPClassifier,
    train_images: ArrayImages,
    val_images: ArrayImages,
    eval_tf: Callable,
    tmp_path: Path,
    recording_adamw: list[float],
) -> None:
    hp = Hyperparams({"ce": 1.0}, lr=2.5e-4, weight_decay=0.0)
    result = _finetune(tiny_classifier, hp, train_images, val_images, eval_tf, tmp_path, epochs=1, lr=1e-3)
    assert result.peak_lr == 1e-3
    assert max(recording_adamw) == pytest.approx(1e-3, rel=1e-12)
    assert len(recording_adamw) == 3


def test_finetune_gradient_accumulation_matches_one_full_batch(
    train_images: ArrayImages, val_images: ArrayImages, eval_tf: Callable, tmp_path: Path
) -> None:
    # 4 micro-batches of 4 must take the same optimizer steps as batches of 16: the same shuffled
    # examples per step, each micro-loss scaled by 1/4, the penalty term included once per step.
    from conftest import build_tiny_classifier

    hp = Hyperparams({"ce": 1.0, "hinge": 0.5, "l2init": 1.0}, lr=1e-3, weight_decay=0.1)
    states = []
    for accum in (1, 4):
        model = build_tiny_classifier()
        _finetune(model, hp, train_images, val_images, eval_tf, tmp_path / f"accum{accum}", epochs=1, grad_accum=accum)
        states.append(model.state_dict())
    full, accumulated = states
    moved = [name for name in full if not torch.equal(full[name], build_tiny_classifier().state_dict()[name])]
    assert moved, "fine-tuning changed no weight"
    for name in full:
        ours, theirs = accumulated[name], full[name]
        if name.endswith("attn.in_proj_bias"):
            # The key bias gets a zero gradient in exact arithmetic (softmax ignores a shift shared by
            # all keys), so its float noise differs between the two runs and Adam scales noise up to
            # full-size steps: compare the query and value biases only.
            width = ours.numel() // 3
            keep = torch.cat([torch.arange(width), torch.arange(2 * width, 3 * width)])
            ours, theirs = ours[keep], theirs[keep]
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6, msg=name)


def test_finetune_rejects_a_class_count_mismatch(
    tiny_classifier: CLIPClassifier, make_images: Callable[..., ArrayImages], eval_tf: Callable, tmp_path: Path
) -> None:
    four_classes = make_images(32, class_names=["red", "green", "blue", "gray"])
    with pytest.raises(ValueError, match="class mismatch: the head has 3 classes, the training data 4"):
        _finetune(tiny_classifier, Hyperparams({"ce": 1.0}, 1e-4, 0.0), four_classes, four_classes, eval_tf, tmp_path)
    assert not (tmp_path / "checkpoint").exists()


def test_finetune_rejects_a_split_smaller_than_one_batch(
    tiny_classifier: CLIPClassifier, make_images: Callable[..., ArrayImages], eval_tf: Callable, tmp_path: Path
) -> None:
    few = make_images(6)
    with pytest.raises(ValueError, match=r"fewer than one batch of 16; lower finetune\.batch_size"):
        _finetune(tiny_classifier, Hyperparams({"ce": 1.0}, 1e-4, 0.0), few, few, eval_tf, tmp_path)


# ---------------------------------------------------------------------------------------------
# Kill and resume, for real
# ---------------------------------------------------------------------------------------------

FINETUNE_HPARAMS = Hyperparams({"ce": 1.0, "l2init": 1.0, "flyp": 0.5}, lr=1e-3, weight_decay=0.1)
FINETUNE_CONFIG = FinetuneConfig(epochs=3, batch_size=16, warmup_steps=3, seed=0)


def deterministic_finetune(out_dir: Path, resume: bool) -> None:
    """The run the kill/resume test repeats: 3 epochs of 4 steps, flyp included (caption RNG)."""
    from autoft.data.transforms import eval_transform, train_transform
    from autoft.models.checkpoint import save_state_dict
    from conftest import build_tiny_classifier, synthetic_images

    model = build_tiny_classifier(seed=0)
    finetune(
        model,
        FINETUNE_HPARAMS,
        synthetic_images(64, seed=1),
        synthetic_images(12, seed=2),
        FINETUNE_CONFIG,
        train_transform=train_transform(model.image_spec),
        eval_transform=eval_transform(model.image_spec),
        selection_metric="accuracy",
        out_dir=out_dir,
        device=CPU,
        resume=resume,
        progress=False,
    )
    save_state_dict(model.state_dict(), out_dir / "final.safetensors")


RESUME_SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    from pathlib import Path

    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, {tests_dir!r})
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    import autoft.train as train
    from test_train import deterministic_finetune

    out_dir, resume = Path(sys.argv[1]), sys.argv[2] == "resume"
    out_dir.mkdir(parents=True, exist_ok=True)
    epoch_batches = train.epoch_batches


    def logged_batches(*args, seed, **kwargs):
        # Which epochs this process trains (the batch seed is the epoch for finetune seed 0).
        with open(out_dir / "epochs_run.txt", "a") as log:
            log.write(f"{{seed}}\\n")
        return epoch_batches(*args, seed=seed, **kwargs)


    train.epoch_batches = logged_batches
    deterministic_finetune(out_dir, resume)
    """
)


def _launch(script: Path, out_dir: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), str(out_dir), mode],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_after_first_checkpoint(victim: subprocess.Popen, state_file: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not state_file.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)


@pytest.fixture
def deterministic_torch() -> Iterator[None]:
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def test_finetune_killed_after_epoch_one_resumes_to_the_same_weights(
    tmp_path: Path, deterministic_torch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subprocess is SIGKILLed during epoch 2 and resumed here; this process also runs it uninterrupted."""
    script = tmp_path / "finetune_script.py"
    script.write_text(RESUME_SCRIPT.format(tests_dir=str(TESTS_DIR)))
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    state_file = killed_dir / CHECKPOINT_DIR / TRAIN_STATE
    victim = _launch(script, killed_dir, "fresh")
    killer = threading.Thread(target=_kill_after_first_checkpoint, args=(victim, state_file, 120.0), daemon=True)
    killer.start()
    try:
        deterministic_finetune(straight_dir, resume=False)  # the uninterrupted run, meanwhile
        killer.join(timeout=150)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL, f"the run was not killed: {victim.stderr.read()}"
    assert state_file.exists(), "killed before the first checkpoint"
    payload = torch.load(state_file, map_location="cpu", weights_only=True)
    assert payload["epoch"] == 0, "the kill landed after epoch 2 began its checkpoint; it must land during epoch 2"
    assert not (killed_dir / "final.safetensors").exists()
    killed_epochs = [int(line) for line in (killed_dir / "epochs_run.txt").read_text().split()]
    assert killed_epochs in ([0], [0, 1])  # epoch 1 done, killed at most into epoch 2

    resumed_epochs: list[int] = []
    epoch_batches = train_module.epoch_batches

    def logged_batches(*args, seed: int, **kwargs):
        resumed_epochs.append(seed)  # the batch seed is the epoch for finetune seed 0
        return epoch_batches(*args, seed=seed, **kwargs)

    monkeypatch.setattr(train_module, "epoch_batches", logged_batches)
    deterministic_finetune(killed_dir, resume=True)
    assert resumed_epochs == [1, 2]  # epochs 2 and 3 only: it resumed, it did not start over

    expected, got = load_file(str(straight_dir / "final.safetensors")), load_file(str(killed_dir / "final.safetensors"))
    zeroshot = build_tiny_zeroshot_state()
    assert not torch.equal(expected["head.weight"], zeroshot["head.weight"])
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    best_a, best_b = load_file(str(straight_dir / "best.safetensors")), load_file(str(killed_dir / "best.safetensors"))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    assert json.loads((killed_dir / "history.json").read_text()) == json.loads(
        (straight_dir / "history.json").read_text()
    )


def build_tiny_zeroshot_state() -> dict[str, torch.Tensor]:
    from conftest import build_tiny_classifier

    return build_tiny_classifier(seed=0).state_dict()
