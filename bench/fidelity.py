"""Search fidelity: does a trial's OOD-val score after a few inner steps rank hyperparameters like the
OOD-val score of the full fine-tuning with the same hyperparameters does?

AutoFT scores each trial after ``search.inner_steps`` AdamW steps from the zero-shot weights; the final
model then trains for ``finetune.epochs`` (digits: 30 epochs = 210 steps) with the winner. A budget is
good enough when the short-horizon score ranks candidates like the final one. For K hyperparameter
settings drawn at random from AutoFT's search space (nine loss weights, lr, wd: Optuna's RandomSampler,
which is what TPE's first trials are), this script measures

* the trial score: OOD-val accuracy after B inner steps, for each budget B (e.g. 10, 30, 100), with the
  product's own trial code (``TrialObjective`` on an in-memory study, one enqueued trial per setting);
* the final score: the product's final fine-tuning (``stage_finetune``: 30 epochs, best ID-val epoch),
  then OOD-val, ID test and the OOD test average of that model;

and reports Spearman's rho (``scipy.stats.spearmanr``) between each budget's trial scores and the
final OOD-val (and the final OOD avg), with a bootstrap 95% CI over the settings.

Each setting is cached as JSON (``--runs``/configs/NNN.json), so the work can be split in chunks and
run by several processes (``--configs 0-7`` and ``--configs 8-15`` side by side, one thread each);
``--summarise`` merges the cache into ``--out`` (Markdown + JSON). Cost on one thread of the shared
2-core machine: about 60-80 s per setting with budgets 10, 30, 100 (the final fine-tuning is most of it).

    PYTHONPATH=src:. python bench/fidelity.py --configs 0-7 &   PYTHONPATH=src:. python bench/fidelity.py --configs 8-15
    PYTHONPATH=src:. python bench/fidelity.py --summarise          # -> docs/results/fidelity.md/.json
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from autoft.atomic import atomic_write_text
from autoft.config import resolve_config
from autoft.contracts import PreparedData
from autoft.data.loaders import BatchStream, ImageBatches
from autoft.data.manifests import load_split
from autoft.data.transforms import eval_transform, train_transform
from autoft.evaluate import accuracy, predict
from autoft.models.classifier import load_classifier
from autoft.search.objective import TrialObjective
from autoft.search.space import SearchSpace
from autoft.stages import input_settings, stage_finetune, stage_prepare, stage_zeroshot
from autoft.stats import spearman

REPO = Path(__file__).resolve().parents[1]
METHOD = "autoft"


def parse_range(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


def sample_settings(space: SearchSpace, count: int, seed: int) -> list[dict[str, float]]:
    """``count`` settings drawn uniformly (log-uniform where the space is) from the search space."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), direction="maximize")
    settings = []
    for _ in range(count):
        trial = study.ask()
        space.sample(trial)
        settings.append(dict(trial.params))
        study.tell(trial, 0.0)
    return settings


def trial_score(config, data: PreparedData, zeroshot_dir: Path, params: dict[str, float], steps: int) -> float:
    """The product's trial (``TrialObjective``) with these parameters and ``steps`` inner steps."""
    search = config.search_for(METHOD)
    device = torch.device("cpu")
    model = load_classifier(zeroshot_dir, device=device)
    settings = input_settings(config, device)
    stream = BatchStream(
        ImageBatches(load_split(data.manifest("id_train")), train_transform(model.image_spec), settings),
        config.data.batch_size,
        seed=config.search_seed * 7919,  # worker 0's stream, as in stage_search
    )
    objective = TrialObjective(
        model,
        SearchSpace.from_config(search),
        stream,
        load_split(data.manifest("ood_val")),
        eval_transform(model.image_spec),
        metric=config.metric_for(METHOD),
        inner_steps=steps,
        device=device,
        dcm_sign=search.dcm_sign,
        eval_batch_size=config.data.eval_batch_size,
        train_token_embedding=config.model.train_token_embedding,
    )
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(params)
    study.optimize(objective, n_trials=1, catch=(Exception,))
    value = study.trials[0].value
    return math.nan if value is None else float(value)


def final_scores(config, data: PreparedData, zeroshot_dir: Path, params: dict[str, float], work: Path) -> dict:
    """Final fine-tuning with these hyperparameters (the product's stage), then the selected model's scores."""
    space = SearchSpace.from_config(config.search_for(METHOD))
    study = optuna.create_study()
    study.enqueue_trial(params)
    trial = study.ask()
    hparams = space.sample(trial)
    try:
        summary = stage_finetune(config, data.folder, zeroshot_dir, METHOD, hparams, work, progress=False)
    except Exception as error:  # a diverging setting: the search would mark its trial FAIL
        return {"failed": f"{type(error).__name__}: {error}"[:300]}
    model = load_classifier(work / "model")
    transform = eval_transform(model.image_spec)
    acc = {
        name: accuracy(predict(model, load_split(data.manifest(name)), transform, batch_size=512))
        for name in ["ood_val", "id_test", *data.ood_tests]
    }
    shutil.rmtree(work, ignore_errors=True)
    return {
        "ood_val": acc["ood_val"],
        "id_test": acc["id_test"],
        "ood_avg": statistics.mean(acc[s] for s in data.ood_tests),
        "best_epoch": summary.best_epoch,
        "best_id_val": summary.best_id_val,
    }


def run_settings(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    config = resolve_config(preset="digits", overrides=[f"seed={args.seed}", "device=cpu", *args.overrides])
    work = args.runs / f"work-{args.configs.replace(',', '_')}"
    data = stage_prepare(config, work / "data")
    stage_zeroshot(config, work / "data", work / "zeroshot")
    space = SearchSpace.from_config(config.search_for(METHOD))
    settings = sample_settings(space, args.count, args.sample_seed)
    (args.runs / "configs").mkdir(parents=True, exist_ok=True)
    for index in parse_range(args.configs):
        path = args.runs / "configs" / f"{index:03d}.json"
        if path.is_file():
            continue
        params = settings[index]
        started = time.perf_counter()
        row: dict[str, Any] = {"index": index, "params": params, "budgets": {}}
        for steps in args.budgets:
            row["budgets"][str(steps)] = trial_score(config, data, work / "zeroshot", params, steps)
        row["final"] = final_scores(config, data, work / "zeroshot", params, work / f"ft{index}")
        row["seconds"] = time.perf_counter() - started
        atomic_write_text(path, json.dumps(row, indent=1))
        print(f"setting {index}: {row['budgets']} final {row['final']} ({row['seconds']:.0f} s)", flush=True)


def bootstrap_rho(x: np.ndarray, y: np.ndarray, seed: int = 0, n: int = 5000) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of Spearman's rho, resampling the settings."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, len(x), len(x))
        if len(set(x[idx])) > 1 and len(set(y[idx])) > 1:
            values.append(spearmanr(x[idx], y[idx]).statistic)
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def summarise(args: argparse.Namespace) -> dict[str, Any]:
    rows = [json.loads(p.read_text()) for p in sorted((args.runs / "configs").glob("*.json"))]
    ok = [r for r in rows if "failed" not in r["final"]]
    budgets = sorted({int(b) for r in rows for b in r["budgets"]})
    result: dict[str, Any] = {"settings": len(rows), "final_failed": len(rows) - len(ok), "budgets": {}, "rows": rows}
    final_val = np.array([r["final"]["ood_val"] for r in ok])
    final_ood = np.array([r["final"]["ood_avg"] for r in ok])
    for steps in budgets:
        # A trial that diverges fails in the search (never chosen): rank it last, as its NaN would be.
        scores = np.array([r["budgets"][str(steps)] for r in ok])
        scores = np.where(np.isfinite(scores), scores, -1.0)
        rho_val, p_val = spearman(scores, final_val)
        rho_ood, p_ood = spearman(scores, final_ood)
        # The search's real work is among good settings: the half with the better final OOD-val.
        good = final_val >= np.median(final_val)
        rho_good, _ = spearman(scores[good], final_val[good]) if good.sum() >= 3 else (math.nan, math.nan)
        top = int(np.argmax(scores))
        result["budgets"][str(steps)] = {
            "spearman_final_ood_val": rho_val,
            "p_value": p_val,
            "ci95_final_ood_val": bootstrap_rho(scores, final_val),
            "spearman_final_ood_avg": rho_ood,
            "p_value_ood_avg": p_ood,
            "ci95_final_ood_avg": bootstrap_rho(scores, final_ood),
            "spearman_final_ood_val_top_half": rho_good,
            "top_half_n": int(good.sum()),
            "trial_failed": int(sum(not math.isfinite(r["budgets"][str(steps)]) for r in ok)),
            "top_setting_final_ood_val": float(final_val[top]),
            "top_setting_final_rank": int((final_val > final_val[top]).sum()) + 1,
        }
    result["best_final_ood_val"] = float(final_val.max()) if len(ok) else math.nan
    result["seconds"] = sum(r["seconds"] for r in rows)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Search fidelity (`bench/fidelity.py`)",
        "",
        f"{result['settings']} settings drawn at random from AutoFT's search space (digits preset, seed 0); "
        f"{result['final_failed']} of their final fine-tunings failed (diverged) and are left out. "
        f"Compute: {result['seconds'] / 60:.0f} min on one thread per process.",
        "",
        "| inner steps | Spearman vs final OOD-val [95% CI] | Spearman vs final OOD avg [95% CI] | "
        "Spearman vs final OOD-val, better half | trials failed | final OOD-val of the budget's top setting (rank) |",
        "|---|---|---|---|---|---|",
    ]
    for steps, b in result["budgets"].items():
        lo, hi = b["ci95_final_ood_val"]
        lo2, hi2 = b["ci95_final_ood_avg"]
        lines.append(
            f"| {steps} | {b['spearman_final_ood_val']:.2f} [{lo:.2f}, {hi:.2f}] | "
            f"{b['spearman_final_ood_avg']:.2f} [{lo2:.2f}, {hi2:.2f}] | "
            f"{b['spearman_final_ood_val_top_half']:.2f} (n={b['top_half_n']}) | {b['trial_failed']} | "
            f"{100 * b['top_setting_final_ood_val']:.1f} ({b['top_setting_final_rank']}) |"
        )
    lines.append("")
    lines.append(f"Best final OOD-val over the settings: {100 * result['best_final_ood_val']:.1f}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="0-15", help="which settings to run, e.g. 0-7 or 0,3,5-6")
    parser.add_argument("--count", type=int, default=16, help="settings drawn (the sample is fixed by the seed)")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="the run's root seed (data, streams)")
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "fidelity")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "fidelity.md")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--summarise", action="store_true", help="merge the cached settings, run nothing")
    args = parser.parse_args(argv)
    if not args.summarise:
        run_settings(args)
        return 0
    result = summarise(args)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(result, indent=1))
    report = markdown(result)
    atomic_write_text(args.out, report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
