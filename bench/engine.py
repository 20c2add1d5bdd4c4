"""Engine speed: the project's training paths against a bare PyTorch loop on the same model and batches.

Rows (ms per optimizer step, batch 64 of real digits, the tiny CLIP unless --model says otherwise):

* ``bare loop``: pre-made batches already on the device; forward, cross-entropy, backward, AdamW.
* ``ObjectiveStep, pre-made``: the project's step (objective, terms) on the same pre-made batches.
* ``final fine-tuning path``: ``FinetuneLoop.run_epoch`` on the in-memory source (batching, crops,
  normalisation, clipping, schedule), as ``autoft step finetune`` runs it.
* ``inner loop``: ``inner_loop`` on a ``BatchStream`` (the search's trials), reset included.

for cross-entropy alone and for all nine terms. Then the loader alone (ms per batch: the per-sample
torchvision DataLoader this project used before, against the in-memory source), a trial's fixed costs
(state reset, OOD-val scoring per pass before and after caching) and evaluation passes. Every path runs
in each of ``--repeats`` interleaved rounds, so machine load hits all alike; ratios are per-round
``bare ms / path ms`` (1.0 = as fast as the bare loop), medians over rounds, against the bare loop with
PyTorch's default AdamW (the issue's reference) and with fused AdamW (what the project uses); "best
rounds" divides the fastest round of each (the cost with the least interference from other load).

    PYTHONPATH=src python bench/engine.py --threads 1 --steps 6 --repeats 25 --json /tmp/engine.json
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from autoft.bench_cli import bench_main, bench_parser
from autoft.config import FinetuneConfig
from autoft.data.ds_digits import CLASS_NAMES, TEMPLATES, load_digit_images
from autoft.data.images import ArrayImages, LabeledImages
from autoft.data.loaders import BatchStream, ImageBatches, epoch_batches, ordered_batches
from autoft.data.transforms import eval_transform, torchvision_eval_transform, train_transform
from autoft.evaluate import predict_batches
from autoft.hparams import LOSS_NAMES, Hyperparams
from autoft.models.classifier import CLIPClassifier, build_zeroshot_classifier
from autoft.models.factory import ImageSpec
from autoft.train import FinetuneLoop, ObjectiveStep, inner_loop, make_adamw, prepare_objective

CPU = torch.device("cpu")
STEP_PATHS = ("ce:", "nine:", "ce+flyp:")  # training-step rows (ratios against the bare loop)


class PerSample(Dataset):
    """The loader this project had before the in-memory path: a torchvision transform per image."""

    def __init__(self, images: LabeledImages, transform: Callable) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.ascontiguousarray(self.images.image(index))).permute(2, 0, 1)
        return self.transform(image), int(self.images.labels[index])


def torchvision_train_transform(spec: ImageSpec) -> v2.Compose:
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(spec.size, scale=(0.9, 1.0), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(spec.mean), std=list(spec.std)),
        ]
    )


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Paths:
    """Every timed path over one model, one split and the same batches."""

    def __init__(self, model: CLIPClassifier, train: ArrayImages, ood_val: ArrayImages, args: argparse.Namespace):
        self.model, self.args = model, args
        self.zeroshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
        spec = model.image_spec
        self.train_source = ImageBatches(train, train_transform(spec))
        self.ood_source = ImageBatches(ood_val, eval_transform(spec))
        self.train, self.ood_val, self.spec = train, ood_val, spec
        self.premade = [batch for _, batch in zip(range(args.steps), self._epoch(0), strict=False)]
        self.stream = BatchStream(self.train_source, args.batch_size, seed=0)

    def _epoch(self, seed: int):
        return epoch_batches(self.train_source, self.args.batch_size, seed=seed)

    def hparams(self, terms: str) -> Hyperparams:
        names = {"ce": ["ce"], "ce+flyp": ["ce", "flyp"], "nine": list(LOSS_NAMES)}[terms]
        weights = {name: (1.0 if name == "ce" else 0.1) for name in names}
        return Hyperparams(weights=weights, lr=1e-5, weight_decay=0.1)

    def reset(self) -> None:
        self.model.load_state_dict(self.zeroshot)
        self.model.train()

    def bare(self, fused: bool = False) -> float:
        self.reset()
        self.model.set_trainable(train_text=False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1, fused=fused or None)
        start = time.perf_counter()
        for images, labels, _ in self.premade:
            loss = F.cross_entropy(self.model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / len(self.premade)

    def objective_premade(self, terms: str, autograd_norms: bool = False, token_embedding: bool = True) -> float:
        """``autograd_norms``: the norm terms through autograd (the code before their closed-form gradients)."""
        self.reset()
        objective, params, anchor = prepare_objective(
            self.model, self.hparams(terms), "reference", self.zeroshot, train_token_embedding=token_embedding
        )
        objective.closed_form = not autograd_norms
        optimizer = make_adamw(params, 1e-5, 0.1)
        step = ObjectiveStep(self.model, objective, params, anchor, CPU)
        start = time.perf_counter()
        for images, labels, _ in self.premade:
            loss, _ = step.loss(images, labels)
            optimizer.zero_grad(set_to_none=True)
            step.backward(loss)
            step.add_parameter_gradients()
            optimizer.step()
        return (time.perf_counter() - start) / len(self.premade)

    def finetune_path(self, terms: str, round_index: int) -> float:
        self.reset()
        config = FinetuneConfig(epochs=1, batch_size=self.args.batch_size, warmup_steps=10, seed=0)
        loop = FinetuneLoop(self.model, self.hparams(terms), config, self.args.steps, device=CPU)
        batches = self._epoch(round_index)
        start = time.perf_counter()
        loop.run_epoch(batches, self.args.steps)
        return (time.perf_counter() - start) / self.args.steps

    def inner(self, terms: str, token_embedding: bool = True) -> float:
        start = time.perf_counter()
        inner_loop(
            self.model,
            self.zeroshot,
            self.hparams(terms),
            self.stream,
            self.args.steps,
            device=CPU,
            train_token_embedding=token_embedding,
        )
        return (time.perf_counter() - start) / self.args.steps

    # ---- the input side alone ----

    def loader_per_sample(self) -> float:
        loader = DataLoader(
            PerSample(self.train, torchvision_train_transform(self.spec)), self.args.batch_size, shuffle=True
        )
        batches = [b for _, b in zip(range(self.args.steps), loader, strict=False)]
        return 0.0 if not batches else self._per_batch_time(loader, len(batches))

    def _per_batch_time(self, loader: DataLoader, count: int) -> float:
        start = time.perf_counter()
        for _, _ in zip(range(count), loader, strict=False):
            pass
        return (time.perf_counter() - start) / count

    def loader_in_memory(self, round_index: int) -> float:
        start = time.perf_counter()
        count = sum(1 for _, _ in zip(range(self.args.steps), self._epoch(round_index), strict=False))
        return (time.perf_counter() - start) / count

    # ---- a trial's fixed costs and evaluation ----

    def state_reset(self, terms: str) -> float:
        def reset() -> None:
            self.model.load_state_dict(self.zeroshot)
            _, params, _ = prepare_objective(self.model, self.hparams(terms), "reference", self.zeroshot)
            make_adamw(params, 1e-5, 0.1)

        return seconds(reset)

    def ood_val_per_sample(self) -> float:
        loader = DataLoader(PerSample(self.ood_val, torchvision_eval_transform(self.spec)), self.args.eval_batch_size)

        @torch.no_grad()
        def score() -> None:
            self.model.eval()
            for images, _ in loader:
                self.model(images)

        return seconds(score)

    def ood_val_cached(self) -> float:
        return seconds(lambda: predict_batches(self.model, self.ood_source, batch_size=self.args.eval_batch_size))

    def ood_val_forward_only(self) -> float:
        batches = list(ordered_batches(self.ood_source, self.args.eval_batch_size))

        @torch.no_grad()
        def forward() -> None:
            self.model.eval()
            for batch in batches:
                self.model(batch.images)

        return seconds(forward)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images, labels = load_digit_images()
    order = np.random.default_rng(0).permutation(len(labels))
    train_rows, ood_rows = order[: args.train_size], order[args.train_size : args.train_size + args.ood_val_size]
    train = ArrayImages(images=images[train_rows], labels=labels[train_rows], class_names=CLASS_NAMES)
    ood_val = ArrayImages(images=images[ood_rows], labels=labels[ood_rows], class_names=CLASS_NAMES)
    model = build_zeroshot_classifier(args.model, "", CLASS_NAMES, TEMPLATES)
    paths = Paths(model, train, ood_val, args)

    timers: dict[str, Callable[[int], float]] = {
        "bare loop": lambda r: paths.bare(),
        "bare loop, fused AdamW": lambda r: paths.bare(fused=True),
        "ce: ObjectiveStep, pre-made": lambda r: paths.objective_premade("ce"),
        "ce: final fine-tuning path": lambda r: paths.finetune_path("ce", r),
        "ce: inner loop": lambda r: paths.inner("ce"),
        "nine: ObjectiveStep, pre-made": lambda r: paths.objective_premade("nine"),
        "nine: final fine-tuning path": lambda r: paths.finetune_path("nine", r),
        "nine: inner loop": lambda r: paths.inner("nine"),
        "nine: ObjectiveStep, autograd norm terms": lambda r: paths.objective_premade("nine", autograd_norms=True),
        "nine: ObjectiveStep, frozen token embedding": lambda r: paths.objective_premade("nine", token_embedding=False),
        "nine: inner loop, frozen token embedding": lambda r: paths.inner("nine", token_embedding=False),
        "ce+flyp: ObjectiveStep, pre-made": lambda r: paths.objective_premade("ce+flyp"),
        "loader: per-sample torchvision": lambda r: paths.loader_per_sample(),
        "loader: in-memory source": lambda r: paths.loader_in_memory(r),
        "trial reset (ce)": lambda r: paths.state_reset("ce"),
        "trial reset (nine)": lambda r: paths.state_reset("nine"),
        "OOD-val pass: per-sample torchvision": lambda r: paths.ood_val_per_sample(),
        "OOD-val pass: cached source": lambda r: paths.ood_val_cached(),
        "OOD-val pass: forward only": lambda r: paths.ood_val_forward_only(),
    }
    for timer in timers.values():  # warm-up: allocator, kernels, caption tokens
        timer(0)
    samples: dict[str, list[float]] = {name: [] for name in timers}
    for round_index in range(args.repeats):
        order = list(timers)
        random.Random(round_index).shuffle(order)  # no path always runs right after another
        for name in order:
            samples[name].append(timers[name](round_index))

    def ratios(reference: str) -> dict[str, float]:
        return {
            name: statistics.median(b / t for b, t in zip(samples[reference], samples[name], strict=True))
            for name in timers
            if name.startswith(STEP_PATHS)
        }

    best_round_ratios = {
        name: min(samples["bare loop"]) / min(samples[name]) for name in timers if name.startswith(STEP_PATHS)
    }

    def over_ce(name: str, ce: str) -> float:
        """How many cross-entropy steps one step of ``name`` costs: per round, median over rounds."""
        return statistics.median(t / c for t, c in zip(samples[name], samples[ce], strict=True))

    step_cost_vs_ce = {
        name: over_ce(name, "ce: inner loop" if "inner loop" in name else "ce: ObjectiveStep, pre-made")
        for name in timers
        if name.startswith(("nine:", "ce+flyp:")) and "final" not in name
    }

    return {
        "step_cost_vs_ce": step_cost_vs_ce,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)",
        "model": args.model,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "ood_val_size": args.ood_val_size,
        "median_ms": {name: 1e3 * statistics.median(values) for name, values in samples.items()},
        "speed_vs_bare": ratios("bare loop"),
        "speed_vs_bare_fused": ratios("bare loop, fused AdamW"),
        "speed_vs_bare_best_rounds": best_round_ratios,
        "min_ms": {name: 1e3 * min(values) for name, values in samples.items()},
        "loader_speedup": statistics.median(
            a / b
            for a, b in zip(samples["loader: per-sample torchvision"], samples["loader: in-memory source"], strict=True)
        ),
        "ood_val_speedup": statistics.median(
            a / b
            for a, b in zip(
                samples["OOD-val pass: per-sample torchvision"], samples["OOD-val pass: cached source"], strict=True
            )
        ),
    }


def report(result: dict) -> str:
    lines = [
        f"engine benchmark: {result['model']}, batch {result['batch_size']}, {result['steps']} steps x "
        f"{result['repeats']} interleaved rounds; {result['machine']}",
        f"{'path':40s} {'median ms':>10s} {'min ms':>8s} {'bare/path':>10s} {'bare fused/path':>16s} "
        f"{'best rounds':>11s}",
    ]
    for name, ms in result["median_ms"].items():
        ratio, fused = result["speed_vs_bare"].get(name), result["speed_vs_bare_fused"].get(name)
        best = result["speed_vs_bare_best_rounds"].get(name)
        ratios = "" if ratio is None else f"{ratio:10.2f} {fused:16.2f} {best:11.2f}"
        lines.append(f"{name:40s} {ms:10.2f} {result['min_ms'][name]:8.2f} {ratios}")
    lines.append("step cost in cross-entropy steps (path ms / ce ms of the same kind, per round, median):")
    for name, ratio in result["step_cost_vs_ce"].items():
        lines.append(f"  {name:54s} {ratio:5.2f}x")
    lines.append(f"loader speed-up (per-sample / in-memory, per batch): {result['loader_speedup']:.1f}x")
    lines.append(
        f"OOD-val pass speed-up ({result['ood_val_size']} images, per-sample / cached): "
        f"{result['ood_val_speedup']:.1f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--model", default="autoft-tiny-vit", help="open_clip config name (random weights)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (set explicitly: shared machines)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per path per round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--train-size", type=int, default=768)
    parser.add_argument("--ood-val-size", type=int, default=600)
    return bench_main(parser, argv, run, report)


if __name__ == "__main__":
    sys.exit(main())
