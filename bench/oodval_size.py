"""How much OOD-val data does AutoFT need? The search's OOD-val subset at several sizes, paired by seed.

For each seed and each size N (``data.ood_val.size``, class-balanced; distinct digits since the OOD-val
counts source images, at most the 310 held-out ones), the product runs zero-shot and AutoFT only
(``run_inprocess`` with ``methods=[zeroshot,autoft]``; search budget and everything else as given with
``--set``). The OOD-val pool is raised to ``--pool`` examples (``data.options.ood_val_min_size``: more
rounds of shifted copies of the same held-out digits, each in another OOD-val family) so every size
draws from the same pool; the OOD test splits do not depend on it. Reported per size: OOD avg, ID test, effective
robustness and the search's own OOD-val score, and the paired differences (size N minus the largest
size) with 95% bootstrap CIs over seeds.

Each (seed, size) run folder is cached, so chunks can run as separate processes; ``--summarise`` merges.
Cost: one AutoFT search plus one final fine-tuning per (seed, size): about 2-3 min on one thread with
20 trials x 30 inner steps.

    PYTHONPATH=src:. python bench/oodval_size.py --seeds 0 --sizes 50 200 1000 --set search.inner_steps=30
    PYTHONPATH=src:. python bench/oodval_size.py --seeds 0 1 2 --summarise   # -> docs/results/oodval_size/
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from autoft.atomic import atomic_write_text
from autoft.config import resolve_config
from autoft.contracts import EvalResult, Results
from autoft.runner import RunLayout, run_inprocess
from autoft.stats import paired_bootstrap_ci

REPO = Path(__file__).resolve().parents[1]


def run_folder(runs: Path, seed: int, size: int) -> Path:
    return runs / f"seed{seed}-n{size}"


def run_one(seed: int, size: int, args: argparse.Namespace) -> None:
    folder = run_folder(args.runs, seed, size)
    if (folder / Results.FILE).is_file():
        return
    overrides = [
        f"seed={seed}",
        "device=cpu",
        "methods=[zeroshot,autoft]",
        f"data.ood_val.size={size}",
        f"data.options.ood_val_min_size={args.pool}",
        *args.overrides,
    ]
    config = resolve_config(preset=args.preset, overrides=overrides)
    print(f"== seed {seed}, OOD-val size {size} ==", flush=True)
    run_inprocess(config, folder, progress=False)


def load(seed: int, size: int, runs: Path) -> dict[str, Any]:
    folder = run_folder(runs, seed, size)
    results = Results.load(folder / Results.FILE)
    layout = RunLayout(folder)
    row = results.methods["autoft"]
    ood_val = EvalResult.load(layout.eval("ood_val"))
    return {
        "id_test": row.id_test,
        "ood_avg": row.ood_avg,
        "er": row.effective_robustness,
        "ood_val_eval": ood_val.models["autoft"].value,
        "search_best": results.search["autoft"].best_value,
        "lr": row.hparams.lr if row.hparams else None,
        "seconds": sum(results.timing_s.values()),
    }


def summarise(seeds: list[int], sizes: list[int], runs: Path) -> dict[str, Any]:
    rows = {size: {seed: load(seed, size, runs) for seed in seeds} for size in sizes}
    largest = max(sizes)
    table = {}
    for size in sizes:
        entry: dict[str, Any] = {"per_seed": rows[size]}
        for key in ("ood_avg", "id_test", "er"):
            values = [rows[size][s][key] for s in seeds]
            if any(v is None for v in values):
                continue
            entry[key] = statistics.mean(values)
            if size != largest:
                entry[f"{key}_vs_{largest}"] = paired_bootstrap_ci(
                    [100 * v for v in values], [100 * rows[largest][s][key] for s in seeds]
                ).to_dict()
        table[size] = entry
    return {
        "seeds": seeds,
        "sizes": sizes,
        "table": table,
        "compute_s": sum(r["seconds"] for by_seed in rows.values() for r in by_seed.values()),
    }


def markdown(result: dict[str, Any], overrides: list[str]) -> str:
    sizes, seeds = result["sizes"], result["seeds"]
    largest = max(sizes)
    lines = [
        f"# AutoFT's OOD-val size (seeds {seeds})",
        "",
        f"Overrides: {', '.join(overrides) or 'none'}. Accuracy in percent, ER in points; differences are "
        f"size N minus size {largest}, paired by seed, mean [95% bootstrap CI] (wins/losses). Compute: "
        f"{result['compute_s'] / 60:.0f} min on one thread.",
        "",
        f"| OOD-val size | ID test | OOD avg | ER | OOD avg vs {largest} | ID test vs {largest} | lr per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        e = result["table"][str(size)] if str(size) in result["table"] else result["table"][size]

        def ci(key: str, e: dict = e) -> str:
            d = e.get(f"{key}_vs_{largest}")
            if d is None:
                return "-"
            return f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] ({d['wins']}/{d['losses']})"

        er = f"{100 * e['er']:+.1f}" if "er" in e else "-"
        lrs = ", ".join(f"{r['lr']:.2g}" for r in e["per_seed"].values())
        lines.append(
            f"| {size} | {100 * e['id_test']:.1f} | {100 * e['ood_avg']:.1f} | {er} | {ci('ood_avg')} | "
            f"{ci('id_test')} | {lrs} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--pool", type=int, default=1000, help="OOD-val pool (data.options.ood_val_min_size)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "oodval_size")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "oodval_size")
    parser.add_argument("--summarise", action="store_true", help="merge the cached runs, run nothing")
    args = parser.parse_args(argv)
    if not args.summarise:
        torch.set_num_threads(1)
        for seed in args.seeds:
            for size in args.sizes:
                run_one(seed, size, args)
        return 0
    result = summarise(args.seeds, args.sizes, args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "oodval_size.json", json.dumps(result, indent=1))
    report = markdown(result, args.overrides)
    atomic_write_text(args.out / "oodval_size.md", report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
