"""What the learned objective does: Optuna parameter importances of AutoFT's searches, and a drop-one
ablation of the best loss weights.

Reads the seeds' run folders of ``bench/robustness.py`` (``runs/bench/digits-seed<N>``):

* importances: ``optuna.importance.get_param_importances`` (fANOVA) over each seed's AutoFT study
  (``search/autoft.json``: the nine-term weights, lr, wd against OOD-val), and their mean over seeds;
* drop-one: from each seed's chosen AutoFT hyperparameters, the product's final fine-tuning
  (``stage_finetune``: same lr, wd, schedule, seed) with one loss term's weight set to 0 (the term
  removed), for each non-anchor term; scored on OOD-val, ID test and the OOD test average, and compared,
  paired by seed, with the full objective (the seed's ``autoft`` model in the same run).

Each (seed, term) is cached as JSON under the seed's folder (``ablation/<term>.json``), so the work can
be split by seed or term across processes; ``--summarise`` merges. Cost: one final fine-tuning per
(seed, term), 20-40 s each on one thread (8 terms x 3 seeds: about 12 min on one thread).

    PYTHONPATH=src:. python bench/ablation.py --seeds 0 --terms 0-3     # one chunk
    PYTHONPATH=src:. python bench/ablation.py --seeds 0 1 2 --summarise  # -> docs/results/ablation/
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from autoft.atomic import atomic_write_text
from autoft.config import read_yaml, validate_config
from autoft.contracts import EvalResult, PreparedData, Results, SearchResult
from autoft.data.manifests import load_split
from autoft.data.transforms import eval_transform
from autoft.evaluate import accuracy, predict
from autoft.hparams import Hyperparams
from autoft.models.classifier import load_classifier
from autoft.runner import RunLayout
from autoft.search_insight import importances
from autoft.stages import stage_finetune
from autoft.stats import paired_bootstrap_ci

REPO = Path(__file__).resolve().parents[1]


def parse_range(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


def load_config(path: Path):
    return validate_config(read_yaml(path))


def droppable(hparams: Hyperparams, anchor: str) -> list[str]:
    return [term for term in hparams.weights if term != anchor]


def run_drop(layout: RunLayout, term: str) -> dict[str, Any]:
    path = layout.root / "ablation" / f"{term}.json"
    if path.is_file():
        return json.loads(path.read_text())
    config = load_config(layout.config)
    chosen = SearchResult.load(layout.search("autoft")).hparams
    weights = {k: v for k, v in chosen.weights.items() if k != term}
    hparams = Hyperparams(weights=weights, lr=chosen.lr, weight_decay=chosen.weight_decay)
    work = layout.root / "ablation" / f"work-{term}"
    started = time.perf_counter()
    summary = stage_finetune(config, layout.data, layout.zeroshot, "autoft", hparams, work, progress=False)
    data = PreparedData.load_from(layout.data)
    model = load_classifier(work / "model")
    transform = eval_transform(model.image_spec)
    acc = {
        name: accuracy(predict(model, load_split(data.manifest(name)), transform, batch_size=512))
        for name in ["ood_val", "id_test", *data.ood_tests]
    }
    row = {
        "term": term,
        "weight_dropped": chosen.weights[term],
        "ood_val": acc["ood_val"],
        "id_test": acc["id_test"],
        "ood_avg": statistics.mean(acc[s] for s in data.ood_tests),
        "best_epoch": summary.best_epoch,
        "seconds": time.perf_counter() - started,
    }
    shutil.rmtree(work, ignore_errors=True)
    atomic_write_text(path, json.dumps(row, indent=1))
    print(f"{layout.root.name} drop {term}: {row}", flush=True)
    return row


def full_objective(layout: RunLayout) -> dict[str, Any]:
    results = Results.load(layout.root / Results.FILE)
    row = results.methods["autoft"]
    ood_val = EvalResult.load(layout.eval("ood_val")).models["autoft"].value
    return {"ood_val": ood_val, "id_test": row.id_test, "ood_avg": row.ood_avg}


def summarise(layouts: dict[int, RunLayout]) -> dict[str, Any]:
    per_seed_importance = {}
    for seed, layout in layouts.items():
        per_seed_importance[seed] = importances(SearchResult.load(layout.search("autoft")))
    names = sorted({n for imp in per_seed_importance.values() for n in imp})
    mean_importance = {n: statistics.mean(imp.get(n, 0.0) for imp in per_seed_importance.values()) for n in names}
    full = {seed: full_objective(layout) for seed, layout in layouts.items()}
    weights = {seed: SearchResult.load(layout.search("autoft")).hparams.to_dict() for seed, layout in layouts.items()}
    terms = sorted({p.stem for layout in layouts.values() for p in (layout.root / "ablation").glob("*.json")})
    drops: dict[str, Any] = {}
    for term in terms:
        seeds = [s for s, layout in layouts.items() if (layout.root / "ablation" / f"{term}.json").is_file()]
        rows = {s: json.loads((layouts[s].root / "ablation" / f"{term}.json").read_text()) for s in seeds}
        entry: dict[str, Any] = {"seeds": seeds, "rows": rows}
        for key in ("ood_avg", "id_test", "ood_val"):
            entry[key] = paired_bootstrap_ci(
                [100 * rows[s][key] for s in seeds], [100 * full[s][key] for s in seeds]
            ).to_dict()
        drops[term] = entry
    return {
        "importance_mean": dict(sorted(mean_importance.items(), key=lambda kv: -kv[1])),
        "importance_per_seed": per_seed_importance,
        "chosen": weights,
        "full": full,
        "drop_one": drops,
    }


def markdown(result: dict[str, Any]) -> str:
    seeds = list(result["full"])
    lines = [
        f"# What the learned objective does (seeds {seeds})",
        "",
        "fANOVA importances of AutoFT's search (OOD-val objective), mean over seeds (per seed in ablation.json):",
        "",
        "| parameter | importance (mean) | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|---|" + "---|" * len(seeds),
    ]
    for name, value in result["importance_mean"].items():
        per = " | ".join(f"{result['importance_per_seed'][s].get(name, 0.0):.2f}" for s in seeds)
        lines.append(f"| {name} | {value:.2f} | {per} |")
    lines += [
        "",
        "Drop-one ablation: the final fine-tuning with AutoFT's chosen hyperparameters minus one loss term, "
        "paired by seed with the full objective. Differences in points, mean [95% bootstrap CI] (wins/losses "
        "of the ablated model over the full one).",
        "",
        "| term dropped | chosen weight (per seed) | OOD avg | ID test | OOD-val |",
        "|---|---|---|---|---|",
    ]
    for term, entry in result["drop_one"].items():
        w = ", ".join(f"{entry['rows'][s]['weight_dropped']:.2g}" for s in entry["seeds"])

        def ci(key: str, entry: dict = entry) -> str:
            d = entry[key]
            return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] ({d['wins']}/{d['losses']})"

        lines.append(f"| {term} | {w} | {ci('ood_avg')} | {ci('id_test')} | {ci('ood_val')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--terms", default="0-7", help="indices into the seed's droppable terms, e.g. 0-3")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "ablation")
    parser.add_argument("--summarise", action="store_true", help="merge the cached drops, run nothing")
    args = parser.parse_args(argv)
    layouts = {seed: RunLayout(args.runs / f"{args.preset}-seed{seed}") for seed in args.seeds}
    if not args.summarise:
        torch.set_num_threads(1)
        for layout in layouts.values():
            config = load_config(layout.config)
            terms = droppable(SearchResult.load(layout.search("autoft")).hparams, config.search.anchor)
            for index in parse_range(args.terms):
                if index < len(terms):
                    run_drop(layout, terms[index])
        return 0
    result = summarise(layouts)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "ablation.json", json.dumps(result, indent=1, default=str))
    report = markdown(result)
    atomic_write_text(args.out / "ablation.md", report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
