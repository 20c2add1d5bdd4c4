"""Multi-fidelity fidelity: does successive halving keep and pick the settings a full-budget search would?
And does freezing the token embedding change how the search ranks settings?

The digits preset searches with ``search.pruner: successive_halving``: a trial reports its OOD-val score at
the rungs (``SearchConfig.report_steps()``, digits: 10 of 30 inner steps) and goes on only when it is in
the top 1/factor of the scores recorded at that rung so far. For K settings drawn at random from AutoFT's
space (Optuna's RandomSampler, as TPE's start-up trials), this script runs the product's trial
(``TrialObjective``) at the FULL budget with the rung reports recorded (a NopPruner: nothing stops), each
setting on the same batches (a fresh stream seeded as worker 0's), and again with the token embedding
frozen (``model.train_token_embedding: false``). From these scores it measures

* Spearman's rho between each rung's score and the full-budget score (all settings, and the better half);
* the pruned search's pick: the settings arrive in a random order at Optuna's real
  ``SuccessiveHalvingPruner`` (in-memory study, the cached rung scores reported, the full-budget score told
  for the promoted ones); the pick is the best COMPLETE trial, as ``select_best`` takes it. Over
  ``--orders`` arrival orders: the pick's rank among all K by full-budget score, how often it is the
  full-budget best, the share of the top 5 that survive, the pruned fraction and the inner steps spent
  against K full trials;
* frozen against trained embedding: Spearman between the two full-budget scores, whether the best
  setting is the same, the overlap of the top 5.

Cost: about 6-10 s per setting on one thread of the shared 2-core machine (two trials of 30 steps).

    PYTHONPATH=src:. python bench/multifidelity.py --count 40 --out docs/results/multifidelity.md
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from autoft.atomic import atomic_write_text
from autoft.config import AutoFTConfig, resolve_config
from autoft.contracts import PreparedData
from autoft.data.loaders import BatchStream, ImageBatches
from autoft.data.manifests import load_split
from autoft.data.transforms import eval_transform, train_transform
from autoft.models.classifier import load_classifier
from autoft.search.objective import TrialObjective
from autoft.search.space import SearchSpace
from autoft.search.study import make_pruner
from autoft.stages import input_settings, stage_prepare, stage_zeroshot
from autoft.stats import spearman

REPO = Path(__file__).resolve().parents[1]
METHOD = "autoft"
TOP = 5


def sample_settings(space: SearchSpace, count: int, seed: int) -> list[dict[str, float]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed), direction="maximize")
    settings = []
    for _ in range(count):
        trial = study.ask()
        space.sample(trial)
        settings.append(dict(trial.params))
        study.tell(trial, 0.0)
    return settings


def score_setting(
    config: AutoFTConfig, data: PreparedData, zeroshot_dir: Path, params: dict[str, float], *, frozen: bool
) -> dict[str, Any]:
    """The product's trial at the full budget, reports at the rungs recorded, nothing pruned."""
    search = config.search_for(METHOD)
    device = torch.device("cpu")
    model = load_classifier(zeroshot_dir, device=device)
    settings = input_settings(config, device)
    stream = BatchStream(
        ImageBatches(load_split(data.manifest("id_train")), train_transform(model.image_spec), settings),
        config.data.batch_size,
        seed=config.search_seed * 7919,  # worker 0's stream: every setting sees the same batches
    )
    objective = TrialObjective(
        model,
        SearchSpace.from_config(search),
        stream,
        load_split(data.manifest("ood_val")),
        eval_transform(model.image_spec),
        metric=config.metric_for(METHOD),
        inner_steps=search.inner_steps,
        device=device,
        dcm_sign=search.dcm_sign,
        report_steps=[] if frozen else search.report_steps(),
        eval_batch_size=config.data.eval_batch_size,
        train_token_embedding=not frozen,
    )
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.enqueue_trial(params)
    started = time.perf_counter()
    study.optimize(objective, n_trials=1, catch=(Exception,))
    trial = study.trials[0]
    return {
        "full": math.nan if trial.value is None else float(trial.value),
        "rungs": {str(step): value for step, value in trial.intermediate_values.items()},
        "seconds": time.perf_counter() - started,
    }


def replay_search(
    search_config, space: SearchSpace, rows: list[dict[str, Any]], order: list[int]
) -> tuple[int, list[int], int]:
    """Optuna's real pruner on the cached scores, settings arriving in ``order``.

    Returns the picked setting (best COMPLETE), the settings that completed, and the inner steps spent.
    """
    study = optuna.create_study(direction="maximize", pruner=make_pruner(search_config))
    completed, steps = [], 0
    for index in order:
        row = rows[index]
        study.enqueue_trial(row["params"])
        trial = study.ask()
        space.sample(trial)
        pruned = False
        for step in search_config.report_steps():
            trial.report(row["trained"]["rungs"][str(step)], step)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                steps += step
                pruned = True
                break
        if not pruned:
            study.tell(trial, row["trained"]["full"])
            steps += search_config.inner_steps
            completed.append(index)
    pick = max(completed, key=lambda i: rows[i]["trained"]["full"])
    return pick, completed, steps


def summarise(config: AutoFTConfig, rows: list[dict[str, Any]], orders: int, seed: int) -> dict[str, Any]:
    search = config.search_for(METHOD)
    space = SearchSpace.from_config(search)
    ok = [r for r in rows if math.isfinite(r["trained"]["full"])]
    full = np.array([r["trained"]["full"] for r in ok])
    result: dict[str, Any] = {
        "settings": len(rows),
        "failed": len(rows) - len(ok),
        "inner_steps": search.inner_steps,
        "rungs": search.report_steps(),
        "reduction_factor": search.pruner_reduction_factor,
        "rung_fidelity": {},
    }
    good = full >= np.median(full)
    for step in search.report_steps():
        rung = np.array([r["trained"]["rungs"][str(step)] for r in ok])
        rho, p = spearman(rung, full)
        rho_good, _ = spearman(rung[good], full[good])
        result["rung_fidelity"][str(step)] = {"spearman": rho, "p_value": p, "spearman_better_half": rho_good}
    ranks = {i: int((full > full[i]).sum()) + 1 for i in range(len(ok))}  # 1 = the full-budget best
    top = {i for i in range(len(ok)) if ranks[i] <= TOP}
    rng = np.random.default_rng(seed)
    picks, pick_values, kept_top, pruned, steps = [], [], [], [], []
    for _ in range(orders):
        order = [int(i) for i in rng.permutation(len(ok))]
        pick, completed, spent = replay_search(search, space, ok, order)
        picks.append(ranks[pick])
        pick_values.append(float(full[pick]))
        kept_top.append(len(top & set(completed)) / len(top))
        pruned.append(1 - len(completed) / len(ok))
        steps.append(spent / (len(ok) * search.inner_steps))
    result["pruned_search"] = {
        "orders": orders,
        "pick_rank_median": statistics.median(picks),
        "pick_rank_mean": statistics.mean(picks),
        "pick_rank_worst": max(picks),
        "pick_is_best_share": sum(rank == 1 for rank in picks) / orders,
        "pick_in_top5_share": sum(rank <= TOP for rank in picks) / orders,
        "top5_kept_share": statistics.mean(kept_top),
        "pruned_fraction": statistics.mean(pruned),
        "step_share": statistics.mean(steps),
        "best_full": float(full.max()),
        "pick_full_median": statistics.median(pick_values),
    }
    frozen = np.array([r["frozen"]["full"] for r in ok])
    rho_frozen, _ = spearman(frozen, full)
    rho_frozen_good, _ = spearman(frozen[good], full[good])
    top_frozen = set(np.argsort(-frozen, kind="stable")[:TOP].tolist())
    top_trained = set(np.argsort(-full, kind="stable")[:TOP].tolist())
    result["frozen_embedding"] = {
        "spearman": rho_frozen,
        "spearman_better_half": rho_frozen_good,
        "same_best": bool(int(np.argmax(frozen)) == int(np.argmax(full))),
        "frozen_best_trained_rank": ranks[int(np.argmax(frozen))],
        "top5_overlap": len(top_frozen & top_trained),
        "mean_abs_difference": float(np.abs(frozen - full).mean()),
        "seconds_trained": statistics.median(r["trained"]["seconds"] for r in ok),
        "seconds_frozen": statistics.median(r["frozen"]["seconds"] for r in ok),
    }
    result["seconds"] = sum(r["trained"]["seconds"] + r["frozen"]["seconds"] for r in rows)
    result["rows"] = rows
    return result


def markdown(result: dict[str, Any]) -> str:
    p, f = result["pruned_search"], result["frozen_embedding"]
    lines = [
        "## Results (`bench/multifidelity.py`)",
        "",
        f"{result['settings']} settings ({result['failed']} diverged and left out), full budget "
        f"{result['inner_steps']} inner steps, rungs {result['rungs']}, reduction factor "
        f"{result['reduction_factor']}; {result['seconds'] / 60:.0f} min of trials on one thread.",
        "",
        "| rung (inner steps) | Spearman vs full-budget score | p | Spearman, better half |",
        "|---|---:|---:|---:|",
    ]
    for step, rung in result["rung_fidelity"].items():
        lines.append(
            f"| {step} | {rung['spearman']:.2f} | {rung['p_value']:.1g} | {rung['spearman_better_half']:.2f} |"
        )
    lines += [
        "",
        f"Successive halving over {p['orders']} arrival orders: the pick's full-budget rank median "
        f"{p['pick_rank_median']:g} (mean {p['pick_rank_mean']:.1f}, worst {p['pick_rank_worst']}); the pick is "
        f"the full-budget best in {100 * p['pick_is_best_share']:.0f}% of orders and in the top {TOP} in "
        f"{100 * p['pick_in_top5_share']:.0f}%; {100 * p['top5_kept_share']:.0f}% of the top {TOP} complete; "
        f"{100 * p['pruned_fraction']:.0f}% of trials are pruned; inner steps spent "
        f"{100 * p['step_share']:.0f}% of K full trials. Best full-budget OOD-val {100 * p['best_full']:.1f}, "
        f"the pick's median {100 * p['pick_full_median']:.1f}.",
        "",
        f"Frozen token embedding against trained (full budget, same settings and batches): Spearman "
        f"{f['spearman']:.2f} (better half {f['spearman_better_half']:.2f}); same best setting: "
        f"{'yes' if f['same_best'] else 'no'} (frozen's best is trained's rank {f['frozen_best_trained_rank']}); "
        f"top-{TOP} overlap {f['top5_overlap']}/{TOP}; mean |difference| {100 * f['mean_abs_difference']:.2f} "
        f"points; median trial {f['seconds_trained']:.1f} s trained vs {f['seconds_frozen']:.1f} s frozen.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=40, help="settings drawn at random")
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="the run's root seed (data, streams)")
    parser.add_argument("--orders", type=int, default=200, help="random arrival orders replayed at the pruner")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "multifidelity")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "multifidelity-results.md")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = resolve_config(preset="digits", overrides=[f"seed={args.seed}", "device=cpu", *args.overrides])
    work = args.runs / "work"
    data = stage_prepare(config, work / "data")
    stage_zeroshot(config, work / "data", work / "zeroshot")
    space = SearchSpace.from_config(config.search_for(METHOD))
    rows = []
    cache = args.runs / "settings"
    cache.mkdir(parents=True, exist_ok=True)
    for index, params in enumerate(sample_settings(space, args.count, args.sample_seed)):
        path = cache / f"{index:03d}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
            continue
        row = {"index": index, "params": params}
        row["trained"] = score_setting(config, data, work / "zeroshot", params, frozen=False)
        row["frozen"] = score_setting(config, data, work / "zeroshot", params, frozen=True)
        atomic_write_text(path, json.dumps(row))
        rows.append(row)
        print(f"setting {index}: {row['trained']} frozen {row['frozen']['full']:.4f}", flush=True)
    result = summarise(config, rows, args.orders, args.sample_seed)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(result, indent=1))
    report = markdown(result)
    atomic_write_text(args.out, report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
