"""Does training the token embedding matter? Trained, frozen and row-sparse embeddings under flyp.

When ``flyp`` is selected the text tower trains, and with it the token embedding: vocabulary x width
(3.2 M of the tiny model's 3.4 M trainable parameters; 25 M in ViT-B/16), of which the prompts use a
few dozen rows. AdamW, gradient clipping and the norm terms then pass over all of it every step. This
fine-tunes the built-in digits foundation model three ways with the same batches and seeds:

* ``trained``: the whole embedding trains (the default, ``model.train_token_embedding: true``);
* ``frozen``: the embedding is frozen (``model.train_token_embedding: false``);
* ``rows``: only the rows of tokens the prompts contain may change (a sparse update; emulated here by
  restoring every other row after each step, so its results are measured, its speed is not: a real
  row-sparse table would cost about what ``frozen`` does).

and reports ID test and OOD accuracy (mean and spread over fine-tuning seeds; the last epoch, no model
selection) and ms per step, for FLYP's objective and for all nine terms.

    AUTOFT_CACHE=.cache/autoft PYTHONPATH=src python bench/token_embedding.py --json /tmp/embedding.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from autoft.bench_cli import bench_main, bench_parser
from autoft.config import FinetuneConfig, resolve_config
from autoft.contracts import PreparedData
from autoft.data.loaders import ImageBatches, epoch_batches
from autoft.data.manifests import load_split
from autoft.data.transforms import eval_transform, train_transform
from autoft.evaluate import accuracy, predict_batches
from autoft.hparams import Hyperparams
from autoft.models.classifier import CLIPClassifier, fill_template, load_classifier
from autoft.stages import stage_prepare, stage_zeroshot
from autoft.train import FinetuneLoop

CPU = torch.device("cpu")
OBJECTIVES = {
    "flyp": Hyperparams({"flyp": 1.0}, lr=1e-4, weight_decay=0.1),
    "nine": Hyperparams(
        {
            "ce": 1.0,
            "hinge": 0.1,
            "entropy": 0.01,
            "dcm": 0.01,
            "flyp": 0.5,
            "l1zero": 0.1,
            "l2zero": 0.1,
            "l1init": 1.0,
            "l2init": 1.0,
        },
        lr=1e-4,
        weight_decay=0.1,
    ),
}
VARIANTS = ("trained", "frozen", "rows")


def prompt_token_rows(model: CLIPClassifier) -> torch.Tensor:
    """The token ids any prompt of this model can contain (captions and head prompts alike)."""
    texts = [fill_template(t, c) for c in model.class_names for t in model.templates]
    return torch.unique(model.tokenizer(texts))


def run_one(zeroshot: Path, sources: dict, hparams: Hyperparams, variant: str, seed: int, epochs: int) -> dict:
    model = load_classifier(zeroshot, device=CPU)
    train = sources["id_train"]
    config = FinetuneConfig(epochs=epochs, batch_size=64, warmup_steps=10, seed=seed)
    steps = len(train) // config.batch_size
    loop = FinetuneLoop(model, hparams, config, steps * epochs, device=CPU, train_token_embedding=variant != "frozen")
    table = model.clip.token_embedding.weight
    start_rows = table.detach().clone()
    keep = torch.ones(len(table), dtype=torch.bool)
    keep[prompt_token_rows(model)] = False
    step_times: list[float] = []
    last = [time.perf_counter()]

    def after_step(*_: object) -> None:
        if variant == "rows":
            with torch.no_grad():
                table[keep] = start_rows[keep]
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now

    for epoch in range(epochs):
        last[0] = time.perf_counter()
        loop.run_epoch(epoch_batches(train, loop.micro_batch, seed=seed * 100_003 + epoch), steps, on_step=after_step)
    model.prepare_for_eval()
    scores = {name: accuracy(predict_batches(model, source, batch_size=512)) for name, source in sources.items()}
    shifts = [name for name in scores if name not in ("id_train", "id_val", "id_test", "ood_val")]
    return {
        "id_test": scores["id_test"],
        "ood_avg": statistics.mean(scores[name] for name in shifts),
        "ms_per_step": 1e3 * statistics.median(step_times[1:]),  # the first step allocates AdamW's state
        "moved_rows": int((table.detach() != start_rows).any(dim=1).sum()),
    }


def summarise(rows: list[dict]) -> dict:
    def spread(key: str) -> tuple[float, float]:
        values = [row[key] for row in rows]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    return {
        "id_test": spread("id_test"),
        "ood_avg": spread("ood_avg"),
        "ms_per_step": statistics.median(row["ms_per_step"] for row in rows),
        "moved_rows": max(row["moved_rows"] for row in rows),
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    config = resolve_config(preset="digits", overrides=["device=cpu"])
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="autoft-embedding-") as tmp:
        data, zeroshot = Path(tmp) / "data", Path(tmp) / "zeroshot"
        stage_prepare(config, data)
        stage_zeroshot(config, data, zeroshot)
        prepared = PreparedData.load_from(data)
        spec = load_classifier(zeroshot).image_spec
        sources = {"id_train": ImageBatches(load_split(prepared.manifest("id_train")), train_transform(spec))}
        for name in ["id_test", *prepared.ood_tests]:
            sources[name] = ImageBatches(load_split(prepared.manifest(name)), eval_transform(spec))
        for objective, hparams in OBJECTIVES.items():
            results[objective] = {}
            for variant in VARIANTS:
                runs = [run_one(zeroshot, sources, hparams, variant, seed, args.epochs) for seed in args.seeds]
                results[objective][variant] = {"summary": summarise(runs), "runs": runs}
                print(f"{objective:5s} {variant:8s} {results[objective][variant]['summary']}", flush=True)
    return {"threads": args.threads, "epochs": args.epochs, "seeds": args.seeds, "results": results}


def report(result: dict) -> str:
    lines = [
        f"token embedding under flyp: digits foundation model, {result['epochs']} epochs, seeds {result['seeds']}",
        f"{'objective':9s} {'variant':8s} {'ID test %':>14s} {'OOD avg %':>14s} {'ms/step':>8s} {'rows moved':>10s}",
    ]
    for objective, variants in result["results"].items():
        for variant, item in variants.items():
            s = item["summary"]
            (id_mean, id_std), (ood_mean, ood_std) = s["id_test"], s["ood_avg"]
            lines.append(
                f"{objective:9s} {variant:8s} {100 * id_mean:8.1f} ± {100 * id_std:3.1f} "
                f"{100 * ood_mean:8.1f} ± {100 * ood_std:3.1f} {s['ms_per_step']:8.1f} {s['moved_rows']:10d}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    return bench_main(parser, argv, run, report)


if __name__ == "__main__":
    sys.exit(main())
