"""GPU readiness: fine-tuning throughput and MFU, AutoFT trial times at the paper's settings, JPEG decode.

Where a CUDA device exists it measures, for ViT-B/16 at 224 px with random weights (nothing downloaded):

* a fine-tuning step of the project's final-run path (``FinetuneLoop``, cross-entropy, bf16 autocast):
  images/s and MFU, eager or ``torch.compile``d, with foreach or fused AdamW, with or without
  channels-last;
* one AutoFT trial (all nine terms) at the paper's ImageNet setting (batch 512, 5 inner steps, 1,000
  OOD-val images, 1,000 classes, text head) and iWildCam setting (batch 256, 100 inner steps, 1,000
  OOD-val images, 182 classes), split into reset + inner loop and OOD-val scoring;
* the input pipeline's JPEG decode throughput per CPU core (decode, resize, centre crop to 224 px).

Without a GPU it runs the tiny model on CPU with everything scaled down and says so: the numbers then
check the script, not the hardware. MFU needs the device's peak bf16 FLOP/s: known for common GPUs, else
``--peak-tflops``.

    PYTHONPATH=src python bench/gpu.py --json /tmp/gpu.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import optuna
import torch
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from autoft.bench_cli import bench_main, bench_parser
from autoft.config import FinetuneConfig, SearchConfig
from autoft.data.images import ArrayImages, FileImages
from autoft.data.loaders import Batch, BatchStream, ImageBatches, InputSettings, epoch_batches
from autoft.data.transforms import eval_transform, train_transform
from autoft.hparams import LOSS_NAMES, Hyperparams
from autoft.models.classifier import CLIPClassifier, build_zeroshot_classifier
from autoft.models.factory import ImageSpec
from autoft.search.objective import TrialObjective
from autoft.search.space import SearchSpace
from autoft.train import ADAM_BETAS, FinetuneLoop, inner_loop, warmup_cosine

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched on the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


@dataclass(frozen=True)
class TrialSetting:
    name: str
    classes: int
    head_mode: str
    batch_size: int
    inner_steps: int
    ood_val: int
    eval_batch_size: int


@dataclass(frozen=True)
class Setting:
    model: str
    batch_size: int
    steps: int
    trials: tuple[TrialSetting, ...]
    decode_images: int
    note: str


GPU = Setting(
    model="ViT-B-16",
    batch_size=256,
    steps=20,
    trials=(
        TrialSetting("imagenet", 1000, "text", 512, 5, 1000, 1024),
        TrialSetting("iwildcam", 182, "linear", 256, 100, 1000, 512),
    ),
    decode_images=200,
    note="ViT-B/16 at 224 px, random weights",
)
CPU = Setting(
    model="autoft-tiny-vit",
    batch_size=32,
    steps=4,
    trials=(
        TrialSetting("imagenet (scaled down)", 20, "text", 32, 2, 64, 64),
        TrialSetting("iwildcam (scaled down)", 10, "linear", 32, 4, 64, 64),
    ),
    decode_images=40,
    note="NO GPU: the tiny model on CPU, scaled down; these numbers check the script, not a GPU",
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_images(count: int, size: int, classes: int, seed: int = 0) -> ArrayImages:
    rng = np.random.default_rng(seed)
    return ArrayImages(
        images=rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8),
        labels=np.arange(count) % classes,
        class_names=[f"class {k}" for k in range(classes)],
    )


def classifier(model_name: str, classes: int, head_mode: str, device: torch.device) -> CLIPClassifier:
    torch.manual_seed(0)
    names = [f"class {k}" for k in range(classes)]
    return build_zeroshot_classifier(model_name, "", names, ["a photo of a {c}.", "a {c}."], head_mode, device)


def endless(source: ImageBatches, batch_size: int) -> Iterator[Batch]:
    epoch = 0
    while True:
        yield from epoch_batches(source, batch_size, seed=epoch)
        epoch += 1


def flops_per_step(loop: FinetuneLoop, batch: Batch) -> float:
    """Forward + backward FLOPs of one step (matmuls, convolutions, attention), counted by torch."""
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = loop.step_fn.loss(batch.images, batch.labels)
        loss.backward()
    loop.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def step_variant(setting: Setting, device: torch.device, *, compiled: bool, fused: bool, channels_last: bool) -> dict:
    model = classifier(setting.model, 100, "linear", device)
    spec = model.image_spec
    source = ImageBatches(
        synthetic_images(2 * setting.batch_size, spec.size, 100), train_transform(spec), InputSettings(device)
    )
    config = FinetuneConfig(epochs=1, batch_size=setting.batch_size, warmup_steps=10, seed=0)
    loop = FinetuneLoop(model, Hyperparams({"ce": 1.0}, 1e-5, 0.1), config, 10**6, device=device)
    if not fused:
        loop.optimizer = torch.optim.AdamW(loop.params, lr=1e-5, weight_decay=0.1, betas=ADAM_BETAS, foreach=True)
        loop.scheduler = warmup_cosine(loop.optimizer, 10, 10**6)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compiled:
        loop.step_fn.forward = torch.compile(loop.forward)
    batches = endless(source, setting.batch_size)
    if channels_last:
        batches = (b._replace(images=b.images.contiguous(memory_format=torch.channels_last)) for b in batches)
    flops = flops_per_step(loop, next(batches)) if not compiled else None
    loop.run_epoch(batches, 3)  # warm-up (and compilation)
    synchronize(device)
    start = time.perf_counter()
    loop.run_epoch(batches, setting.steps)
    synchronize(device)
    elapsed = (time.perf_counter() - start) / setting.steps
    return {
        "variant": f"{'compiled' if compiled else 'eager'}, {'fused' if fused else 'foreach'} AdamW"
        + (", channels-last" if channels_last else ""),
        "ms_per_step": 1e3 * elapsed,
        "images_per_s": setting.batch_size / elapsed,
        "tflops_per_step": None if flops is None else flops / 1e12,
    }


def trial_time(setting: Setting, trial: TrialSetting, device: torch.device) -> dict:
    """One AutoFT trial with all nine terms: reset + inner steps, then the whole OOD-val subset."""
    model = classifier(setting.model, trial.classes, trial.head_mode, device)
    spec = model.image_spec
    settings = InputSettings(device)
    train = ImageBatches(
        synthetic_images(2 * trial.batch_size, spec.size, trial.classes), train_transform(spec), settings
    )
    ood_val = synthetic_images(trial.ood_val, spec.size, trial.classes, seed=1)
    space = SearchSpace.from_config(SearchConfig(losses=list(LOSS_NAMES), base_lr=1e-5))
    stream = BatchStream(train, trial.batch_size, seed=0)
    objective = TrialObjective(
        model,
        space,
        stream,
        ood_val,
        eval_transform(spec),
        metric="accuracy",
        inner_steps=trial.inner_steps,
        device=device,
        eval_batch_size=trial.eval_batch_size,
    )
    hparams = Hyperparams({name: (1.0 if name == "ce" else 0.1) for name in LOSS_NAMES}, 1e-5, 0.1)

    def timed(fn: Callable[[], object]) -> float:
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        return time.perf_counter() - start

    timed(lambda: inner_loop(model, objective.zeroshot_state, hparams, stream, 1, device=device))  # warm-up
    timed(objective.score)
    inner = timed(
        lambda: inner_loop(model, objective.zeroshot_state, hparams, stream, trial.inner_steps, device=device)
    )
    score = timed(objective.score)
    study = optuna.create_study(direction="maximize")
    whole = timed(lambda: study.optimize(objective, n_trials=1))
    return {**asdict(trial), "inner_loop_s": inner, "ood_val_scoring_s": score, "whole_trial_s": whole}


def decode_per_core(count: int, size: int) -> dict:
    """Images/s of one core through the streamed path's per-image work: JPEG decode, resize, centre crop."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(count):
            # ImageNet-like: 500 x 375, smooth content plus noise (pure noise decodes unrealistically slowly).
            x = np.linspace(0, 255, 500)[None, :, None] * np.ones((375, 1, 3))
            image = np.clip(x + rng.normal(0, 20, size=(375, 500, 3)), 0, 255).astype(np.uint8)
            path = Path(folder) / f"{i}.jpg"
            Image.fromarray(image).save(path, quality=90)
            paths.append(str(path))
        files = FileImages(paths=paths, labels=np.zeros(count, dtype=np.int64), class_names=["x"])
        transform = eval_transform(ImageSpec(size, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD))
        start = time.perf_counter()
        for index in range(count):
            transform.base(files.image(index))
        elapsed = time.perf_counter() - start
    return {"jpeg": "500x375", "size": size, "images_per_s_per_core": count / elapsed}


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def run(args: argparse.Namespace) -> dict:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    setting = GPU if device.type == "cuda" else CPU
    compile_variants = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    peak = peak_flops(device, args.peak_tflops)
    variants = [
        dict(compiled=False, fused=False, channels_last=False),
        dict(compiled=False, fused=True, channels_last=False),
        dict(compiled=False, fused=True, channels_last=True),
    ]
    if compile_variants:
        variants += [
            dict(compiled=True, fused=True, channels_last=False),
            dict(compiled=True, fused=True, channels_last=True),
        ]
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    steps = [step_variant(setting, device, **variant) for variant in variants]
    flops = 1e12 * steps[0]["tflops_per_step"]  # the same maths in every variant: count it once, eagerly
    for step in steps:
        step["tflops_per_step"] = flops / 1e12
        step["mfu"] = None if peak is None else flops / (step["ms_per_step"] / 1e3) / peak
    trials = [trial_time(setting, trial, device) for trial in setting.trials]
    decode = decode_per_core(setting.decode_images, 224)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "note": setting.note,
        "model": setting.model,
        "batch_size": setting.batch_size,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32 (autocast is off on CPU)",
        "torch_compile": "measured" if compile_variants else "skipped (CPU; --compile on to force)",
        "peak_tflops": None if peak is None else peak / 1e12,
        "steps": steps,
        "trials": trials,
        "decode": decode,
    }


def report(result: dict) -> str:
    lines = [
        f"device: {result['device']} | {result['note']}",
        f"fine-tuning step: {result['model']}, batch {result['batch_size']}, {result['precision']}, "
        f"torch.compile {result['torch_compile']}",
    ]
    for step in result["steps"]:
        mfu = "n/a" if step["mfu"] is None else f"{100 * step['mfu']:.1f}%"
        lines.append(
            f"  {step['variant']:38s} {step['ms_per_step']:9.1f} ms/step {step['images_per_s']:9.1f} img/s  MFU {mfu}"
        )
    for trial in result["trials"]:
        lines.append(
            f"trial {trial['name']}: {trial['inner_steps']} inner steps x batch {trial['batch_size']} "
            f"{trial['inner_loop_s']:.2f} s + OOD-val {trial['ood_val']} images {trial['ood_val_scoring_s']:.2f} s; "
            f"whole trial {trial['whole_trial_s']:.2f} s"
        )
    decode = result["decode"]
    rate = decode["images_per_s_per_core"]
    lines.append(f"JPEG decode ({decode['jpeg']} -> {decode['size']} px): {rate:.0f} images/s per core")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--cpu", action="store_true", help="measure the CPU path even where a GPU exists")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto", help="auto: on GPU only")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    return bench_main(parser, argv, run, report)


if __name__ == "__main__":
    sys.exit(main())
