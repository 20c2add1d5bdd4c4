"""Does the OOD-val rank trial models by their OOD test accuracy? The old single-family set against the new one.

Protocol (written before the runs; docs/results/oodval_rank.md holds the numbers):

* Data: the digits preset at data seed 0 (its splits and OOD-val as shipped: 310 distinct held-out
  digits in 4 non-test families, 2 copies each; the held-out draw of the 140 id_val digits). The OLD
  design is rebuilt on the same held-out digits: `colorize` only, 3 copies per digit (severities
  cycling), on 181 of the 310 digits drawn stratified by class (the old set's count).
* Models: ``--settings`` AutoFT hyperparameters drawn at random (Optuna's RandomSampler, seed 0) from
  the preset's search space (9 terms, lr in [1e-6, 1e-2], weight decay in [0, 1]); each takes the
  preset's ``--inner-steps`` (10) steps from the zero-shot weights on the SAME id_train batches (one
  stream, reseeded per setting), i.e. exactly the models a search trial scores.
* Each model is scored on the old OOD-val, the new OOD-val, the held-out draw, and the 7 OOD test shifts
  (their mean is "OOD avg"). Reported: Spearman's rho between each validation score and OOD avg, over
  all settings and over the better half by that validation score (the region where a search picks its
  winner; diverged settings at chance inflate the all-settings figure), with a paired bootstrap CI of
  the difference new - old over settings (2,000 resamples).

    PYTHONPATH=src:. OMP_NUM_THREADS=1 python bench/oodval_rank.py --settings 60 \\
        --json docs/results/oodval_rank.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import optuna
import torch

from autoft.atomic import atomic_write_text
from autoft.config import resolve_config
from autoft.data.ds_digits import load_digit_images, shifted_views
from autoft.data.images import ArrayImages
from autoft.data.loaders import BatchStream, ImageBatches
from autoft.data.manifests import load_split, read_manifest
from autoft.data.transforms import eval_transform, train_transform
from autoft.evaluate import accuracy, predict
from autoft.models.classifier import build_zeroshot_classifier
from autoft.search.space import SearchSpace
from autoft.stages import resolve_pretrained, stage_prepare
from autoft.stats import spearman
from autoft.train import inner_loop

OLD_DISTINCT = 181
OLD_COPIES = 3


def old_ood_val(held_out_rows: np.ndarray, seed: int, class_names: list[str]) -> ArrayImages:
    """The pre-rebalance design on today's held-out digits: colorize only, 3 copies, 181 digits."""
    _, labels = load_digit_images()
    rng = np.random.default_rng(seed)
    # Stratified by class like the old partition: the same share of each class.
    chosen = np.concatenate(
        [
            rng.choice(members, size=round(len(members) * OLD_DISTINCT / len(held_out_rows)), replace=False)
            for members in (held_out_rows[labels[held_out_rows] == c] for c in range(10))
        ]
    )
    views = shifted_views(np.sort(chosen), ["colorize"], [1, 2, 3, 4, 5], OLD_COPIES, seed, "ood_val")
    return ArrayImages(images=views.images, labels=labels[views.rows], class_names=class_names)


def spearman_pair(values: np.ndarray, target: np.ndarray) -> float:
    return spearman(values, target)[0]


def better_half(values: np.ndarray) -> np.ndarray:
    return np.argsort(-values)[: max(len(values) // 2, 3)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", type=int, default=60)
    parser.add_argument("--inner-steps", type=int, default=None, help="default: the preset's search.inner_steps")
    parser.add_argument("--data", type=Path, default=Path("runs/oodval_rank/data"))
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = resolve_config(preset="digits")
    steps = args.inner_steps or config.search.inner_steps
    data = stage_prepare(config, args.data)
    model = build_zeroshot_classifier(
        config.model.name, resolve_pretrained(config), data.class_names, data.templates, config.model.head_mode
    )
    zeroshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tf = eval_transform(model.image_spec)
    held_rows = np.unique(read_manifest(data.manifest("ood_val_source"))["source_indices"])
    sets = {
        "old_ood_val": old_ood_val(held_rows, config.seed, data.class_names),
        "new_ood_val": load_split(data.manifest("ood_val")),
    }
    sets["holdout"] = load_split(data.manifest("ood_val_holdout"))
    tests = {name: load_split(data.manifest(name)) for name in data.ood_tests}
    train = ImageBatches(load_split(data.manifest("id_train")), train_transform(model.image_spec))
    space = SearchSpace.from_config(config.search_for("autoft"))
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    rows = []
    for index in range(args.settings):
        hparams = space.sample(study.ask())
        stream = BatchStream(train, config.data.batch_size, seed=config.search_seed)
        try:
            inner_loop(model, zeroshot, hparams, stream, steps, device=torch.device("cpu"))
        except Exception as error:  # a diverged setting is a data point at chance, as a failed trial
            print(f"setting {index}: {type(error).__name__}", flush=True)
        model.prepare_for_eval()
        scores = {name: accuracy(predict(model, split, tf, batch_size=512)) for name, split in sets.items()}
        ood = {name: accuracy(predict(model, split, tf, batch_size=512)) for name, split in tests.items()}
        scores["ood_avg"] = float(np.mean(list(ood.values())))
        rows.append({"lr": hparams.lr, "weight_decay": hparams.weight_decay, **scores, "ood": ood})
        print(f"setting {index}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)
    target = np.array([r["ood_avg"] for r in rows])
    summary: dict[str, dict[str, float]] = {}
    rng = np.random.default_rng(0)
    for scope in ("all", "better_half"):
        result = {}
        for name in sets:
            values = np.array([r[name] for r in rows])
            keep = np.arange(len(rows)) if scope == "all" else better_half(values)
            result[name] = spearman_pair(values[keep], target[keep])
        diffs = []
        for _ in range(2000):
            sample = rng.integers(0, len(rows), len(rows))
            pair = []
            for name in ("new_ood_val", "old_ood_val"):
                values = np.array([rows[i][name] for i in sample])
                keep = np.arange(len(sample)) if scope == "all" else better_half(values)
                pair.append(spearman_pair(values[keep], target[sample][keep]))
            diffs.append(pair[0] - pair[1])
        diffs_arr = np.array([d for d in diffs if np.isfinite(d)])
        result["new_minus_old_ci95"] = [float(np.quantile(diffs_arr, 0.025)), float(np.quantile(diffs_arr, 0.975))]
        summary[scope] = result
        print(f"{scope}: " + json.dumps(result), flush=True)
    counts = {name: len(split) for name, split in sets.items()}
    payload = {"settings": args.settings, "inner_steps": steps, "examples": counts, "summary": summary, "rows": rows}
    if args.json:
        atomic_write_text(args.json, json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
