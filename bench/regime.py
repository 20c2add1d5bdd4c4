"""Regime diagnostics for a foundation-model recipe: is the digits benchmark in AutoFT's regime?

AutoFT only has something to do when fine-tuning TRADES robustness for ID accuracy: the zero-shot
model must be more robust than models trained on the ID data alone would be at its ID accuracy
(effective robustness, Taori et al. 2020), and ordinary fine-tuning must lose much of that. This
script measures exactly that, with no AutoFT search, for one recipe on the default digits benchmark
(data seed 0):

* zero-shot: the recipe's foundation model with the prompt head;
* reference models: the same architecture from random init, trained with cross-entropy on id_train
  alone at several budgets (epochs), to fit the baseline line probit(OOD avg) = a * probit(ID) + b;
* FT: cross-entropy fine-tuning with the preset's schedule, the lr chosen on ID-val from a grid
  (half-decades 1e-5..1e-2) and the best epoch on ID-val, for each fine-tuning seed;
* the WiSE-FT curve of each seed's selected FT model (alpha 0, 0.1, ..., 1) on ID test and OOD;
* effective robustness (OOD avg minus the line at the model's ID test accuracy) of each, the WiSE-FT
  bulge (best OOD avg on the curve minus the better end) and the per-shift FT - zero-shot gaps.

It writes ``regime.md``, ``regime.json`` and ``regime.png`` (ID vs OOD in probit axes) under --out/NAME.

    PYTHONPATH=src:. OMP_NUM_THREADS=1 .venv/bin/python bench/regime.py --recipe default
    ... --recipe v1 --finetune epochs=10 --seeds 0 --lrs 1e-4 3e-4 1e-3   # a cheaper look at another design
    ... --recipe default --set pretrain_seed=1 --name default-pseed1      # any recipe field can be overridden
    ... --export-reference-line docs/results/regime/regime.json   # only rewrite the shipped line from a result

The reference line (slope, intercept, the OOD shifts and severity it averages, provenance) ships as
``src/autoft/data/reference_lines/digits.json``; a run of the default recipe over the default data
rewrites it (``--no-export`` to keep it), and ``--export-reference-line`` rewrites it from a saved
``regime.json`` without running anything. ``autoft.effective_robustness`` reads it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import norm

from autoft.atomic import atomic_write_text
from autoft.config import AutoFTConfig, FinetuneConfig, resolve_config
from autoft.contracts import PreparedData
from autoft.data.images import LabeledImages
from autoft.data.manifests import load_split
from autoft.data.shifts import SHIFTS
from autoft.data.transforms import eval_transform, train_transform
from autoft.evaluate import accuracy, predict
from autoft.hparams import Hyperparams
from autoft.models.checkpoint import load_state_dict_file
from autoft.models.classifier import CLIPClassifier, build_zeroshot_classifier
from autoft.models.pretrain import DEFAULT_RECIPE, PretrainRecipe, foundation_model
from autoft.paths import default_cache_dir
from autoft.stages import stage_prepare
from autoft.train import finetune
from autoft.wiseft import interpolate

REPO = Path(__file__).resolve().parents[1]
LR_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
WEIGHT_DECAY = 0.1
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))
# Reference models: random init, cross-entropy on id_train, at these budgets (epochs of the preset's
# batch size). The from-scratch lr is fixed: these models only have to span ID accuracies.
REFERENCE_EPOCHS = (1, 2, 4, 8, 16, 32, 64, 128)
REFERENCE_LR = 1e-3
PROBIT_CLIP = 1e-3

# Candidate recipes (the designs tried in docs/results/regime.md). Knobs not named keep the defaults.
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},  # handwritten pool + 20k printed digits, 3,000 steps (the chosen design)
    "v1": {"steps": 1200, "printed_images": 0, "printed_share": 0.0},  # before issue 16: handwritten only
    "printed6k": {"steps": 6000},  # the default pretrained twice as long
    "printed75": {"printed_share": 0.75},  # three quarters of each batch printed
}


@dataclass
class Scores:
    """Accuracy (0..1) on ID-val, ID test and each OOD test shift."""

    id_val: float
    id_test: float
    ood: dict[str, float]
    ood_val: float = math.nan  # AutoFT's OOD-val subset (colorize): not a test shift, not in the OOD avg

    @property
    def ood_avg(self) -> float:
        return statistics.mean(self.ood.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id_val": self.id_val,
            "id_test": self.id_test,
            "ood": self.ood,
            "ood_avg": self.ood_avg,
            "ood_val": self.ood_val,
        }


@dataclass
class Benchmark:
    """The splits of the default digits benchmark, loaded once."""

    config: AutoFTConfig
    data: PreparedData
    train: LabeledImages
    splits: dict[str, LabeledImages] = field(default_factory=dict)  # id_val, id_test, ood_val, OOD tests

    @property
    def ood_tests(self) -> list[str]:
        return list(self.data.ood_tests)

    def score(self, model: CLIPClassifier, batch_size: int = 512) -> Scores:
        transform = eval_transform(model.image_spec)
        acc = {
            name: accuracy(predict(model, images, transform, batch_size=batch_size))
            for name, images in self.splits.items()
        }
        ood = {s: acc[s] for s in self.ood_tests}
        return Scores(id_val=acc["id_val"], id_test=acc["id_test"], ood=ood, ood_val=acc["ood_val"])


def load_benchmark(folder: Path, finetune_overrides: Sequence[str]) -> Benchmark:
    overrides = [f"finetune.{item}" for item in finetune_overrides]
    config = resolve_config(preset="digits", overrides=overrides)
    data = stage_prepare(config, folder)
    names = ["id_val", "id_test", "ood_val", *data.ood_tests]
    splits = {name: load_split(data.manifest(name)) for name in names}
    return Benchmark(config=config, data=data, train=load_split(data.manifest("id_train")), splits=splits)


def train_ce(
    model: CLIPClassifier, bench: Benchmark, lr: float, finetune_config: FinetuneConfig, work: Path
) -> tuple[dict[str, torch.Tensor], int]:
    """Cross-entropy training with the product's ``finetune``; returns the best ID-val epoch's weights and index."""
    torch.manual_seed(finetune_config.seed)
    result = finetune(
        model,
        Hyperparams(weights={"ce": 1.0}, lr=lr, weight_decay=WEIGHT_DECAY),
        bench.train,
        bench.splits["id_val"],
        finetune_config,
        train_transform=train_transform(model.image_spec),
        eval_transform=eval_transform(model.image_spec),
        selection_metric="accuracy",
        out_dir=work,
        device=torch.device("cpu"),
        eval_batch_size=512,
        progress=False,
    )
    state = load_state_dict_file(result.best_state_path)
    shutil.rmtree(work, ignore_errors=True)  # checkpoints of every epoch: hundreds of MB over a grid
    return state, result.best_epoch


# ----------------------------------------------------------------------------------------------
# Effective robustness
# ----------------------------------------------------------------------------------------------


def probit(p: float | np.ndarray) -> np.ndarray:
    return norm.ppf(np.clip(p, PROBIT_CLIP, 1 - PROBIT_CLIP))


@dataclass
class LinearFit:
    """probit(OOD avg) = slope * probit(ID test) + intercept, over the reference models."""

    slope: float
    intercept: float
    r2: float

    @classmethod
    def fit(cls, id_acc: Sequence[float], ood_acc: Sequence[float]) -> LinearFit:
        x, y = probit(np.asarray(id_acc)), probit(np.asarray(ood_acc))
        slope, intercept = np.polyfit(x, y, 1)
        residual = y - (slope * x + intercept)
        r2 = 1 - float(residual @ residual) / max(float(((y - y.mean()) ** 2).sum()), 1e-12)
        return cls(float(slope), float(intercept), r2)

    def predict(self, id_acc: float) -> float:
        return float(norm.cdf(self.slope * probit(id_acc) + self.intercept))

    def effective_robustness(self, id_acc: float, ood_acc: float) -> float:
        return ood_acc - self.predict(id_acc)


def reference_models(bench: Benchmark, model_name: str, work: Path, cache: Path) -> list[dict[str, Any]]:
    """Random-init models trained on id_train at several budgets (cached per architecture and data)."""
    budgets = "_".join(map(str, REFERENCE_EPOCHS))
    cache_file = (
        cache / f"reference-{model_name}-lr{REFERENCE_LR:g}-epochs{budgets}-bs{bench.config.finetune.batch_size}.json"
    )
    if cache_file.is_file():
        return json.loads(cache_file.read_text())
    rows = []
    for epochs in REFERENCE_EPOCHS:
        torch.manual_seed(0)
        model = build_zeroshot_classifier(
            model_name, "", bench.data.class_names, bench.data.templates, bench.config.model.head_mode
        )
        # Warmup shorter than the run (id_train's full batches per epoch; 7 with 454 digits, 5 with 324).
        steps_per_epoch = max(len(bench.train) // bench.config.finetune.batch_size, 1)
        config = bench.config.finetune.model_copy(
            update={
                "epochs": epochs,
                "warmup_steps": min(20, steps_per_epoch * epochs - 1),
                "seed": bench.config.finetune_seed,  # the root seed: finetune.seed is None in the preset
            }
        )
        state, _ = train_ce(model, bench, REFERENCE_LR, config, work / f"ref{epochs}")
        model.load_state_dict(state)
        scores = bench.score(model)
        rows.append({"epochs": epochs, "lr": REFERENCE_LR, **scores.to_dict()})
        print(f"reference {epochs:4d} epochs: ID {scores.id_test:.3f} OOD {scores.ood_avg:.3f}", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache_file, json.dumps(rows, indent=1))
    return rows


# ----------------------------------------------------------------------------------------------
# The measurement
# ----------------------------------------------------------------------------------------------


def measure(
    recipe: PretrainRecipe, bench: Benchmark, seeds: Sequence[int], lrs: Sequence[float], out: Path
) -> dict[str, Any]:
    started = time.perf_counter()
    weights = foundation_model(default_cache_dir(), progress=False, recipe=recipe)
    build_record = json.loads(weights.with_suffix(".json").read_text())
    print(f"foundation model {weights.name}: built in {build_record['build_seconds']} s", flush=True)
    zeroshot = build_zeroshot_classifier(
        recipe.model_name, str(weights), bench.data.class_names, bench.data.templates, bench.config.model.head_mode
    )
    zs_scores = bench.score(zeroshot)
    zs_state = {k: v.clone() for k, v in zeroshot.state_dict().items()}
    print(f"zero-shot: ID {zs_scores.id_test:.3f} OOD {zs_scores.ood_avg:.3f}", flush=True)

    refs = reference_models(bench, recipe.model_name, out / "work", out.parent / "_reference")
    line = LinearFit.fit([r["id_test"] for r in refs], [r["ood_avg"] for r in refs])

    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        grid, best = [], None
        for lr in lrs:
            model = copy.deepcopy(zeroshot)
            config = bench.config.finetune.model_copy(update={"seed": seed})
            state, best_epoch = train_ce(model, bench, lr, config, out / "work" / f"ft-s{seed}-lr{lr:g}")
            model.load_state_dict(state)
            scores = bench.score(model)
            grid.append({"lr": lr, "best_epoch": best_epoch, **scores.to_dict()})
            print(
                f"seed {seed} lr {lr:g}: best epoch {best_epoch + 1}, ID-val {scores.id_val:.3f} "
                f"ID {scores.id_test:.3f} OOD {scores.ood_avg:.3f}",
                flush=True,
            )
            # The product's rule: highest ID-val; ties go to the smaller lr (the first in the grid).
            if best is None or scores.id_val > best[0]:
                best = (scores.id_val, lr, state, scores)
        assert best is not None
        _, lr, ft_state, ft_scores = best
        curve = []
        model = copy.deepcopy(zeroshot)
        for alpha in ALPHAS:
            model.load_state_dict(interpolate(zs_state, ft_state, alpha))
            curve.append({"alpha": alpha, **bench.score(model).to_dict()})
        per_seed.append(
            {"seed": seed, "lr": lr, "best_epoch": next(g["best_epoch"] for g in grid if g["lr"] == lr)}
            | {"ft": ft_scores.to_dict(), "grid": grid, "wiseft": curve}
        )
        print(f"seed {seed}: chose lr {lr:g}; FT ID {ft_scores.id_test:.3f} OOD {ft_scores.ood_avg:.3f}", flush=True)

    return summarise(recipe, build_record, zs_scores, refs, line, per_seed, bench, time.perf_counter() - started)


def _mean(rows: Sequence[dict[str, Any]], key: str) -> float:
    return statistics.mean(r[key] for r in rows)


def summarise(
    recipe: PretrainRecipe,
    build: dict[str, Any],
    zs: Scores,
    refs: list[dict[str, Any]],
    line: LinearFit,
    per_seed: list[dict[str, Any]],
    bench: Benchmark,
    seconds: float,
) -> dict[str, Any]:
    shifts = bench.ood_tests
    ft_rows = [s["ft"] for s in per_seed]
    ft_id, ft_ood = _mean(ft_rows, "id_test"), _mean(ft_rows, "ood_avg")
    ft_shift = {s: statistics.mean(r["ood"][s] for r in ft_rows) for s in shifts}
    curve = [
        {
            "alpha": alpha,
            "id_test": statistics.mean(s["wiseft"][i]["id_test"] for s in per_seed),
            "ood_avg": statistics.mean(s["wiseft"][i]["ood_avg"] for s in per_seed),
        }
        for i, alpha in enumerate(ALPHAS)
    ]
    best_point = max(curve, key=lambda p: p["ood_avg"])
    bulge = best_point["ood_avg"] - max(curve[0]["ood_avg"], curve[-1]["ood_avg"])
    seed_bulges = [
        max(p["ood_avg"] for p in s["wiseft"]) - max(s["wiseft"][0]["ood_avg"], s["wiseft"][-1]["ood_avg"])
        for s in per_seed
    ]
    zs_er = line.effective_robustness(zs.id_test, zs.ood_avg)
    ft_er = statistics.mean(line.effective_robustness(r["id_test"], r["ood_avg"]) for r in ft_rows)
    far = [s for s in shifts if SHIFTS[s].kind == "far"]
    far_below = [s for s in far if ft_shift[s] < zs.ood[s]]
    targets = {
        "zeroshot_er_at_least_5": zs_er >= 0.05,
        "ft_keeps_at_most_half_er": ft_er <= zs_er / 2,
        "wiseft_bulge_at_least_2": bulge >= 0.02,
        "ft_below_zeroshot_on_2_far_shifts": len(far_below) >= 2,
    }
    return {
        "recipe": dataclasses.asdict(recipe),
        "recipe_key": recipe.key(),
        "build": {k: build[k] for k in ("build_seconds", "build_cpu_seconds", "final_loss", "torch") if k in build},
        "finetune": bench.config.finetune.model_dump(),
        "lr_grid": list(LR_GRID),
        "weight_decay": WEIGHT_DECAY,
        "fit": {"space": "probit", **dataclasses.asdict(line)},
        "reference": refs,
        "zeroshot": {**zs.to_dict(), "effective_robustness": zs_er},
        "ft": {
            "id_test": ft_id,
            "ood_avg": ft_ood,
            "ood": ft_shift,
            "ood_val": statistics.mean(r.get("ood_val", math.nan) for r in ft_rows),
            "effective_robustness": ft_er,
            "per_seed": per_seed,
        },
        "wiseft_curve": curve,
        "wiseft_bulge": bulge,
        "wiseft_bulge_per_seed": seed_bulges,
        "wiseft_best_alpha": best_point["alpha"],
        "far_shifts_ft_below_zeroshot": far_below,
        "targets": targets,
        "seconds": seconds,
    }


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown(name: str, result: dict[str, Any]) -> str:
    zs, ft = result["zeroshot"], result["ft"]
    shifts = list(zs["ood"])
    fit = result["fit"]
    curve = result["wiseft_curve"]
    lines = [
        f"# Regime diagnostics: recipe `{name}` (key {result['recipe_key']})",
        "",
        f"Foundation model built in {result['build']['build_seconds']} s; fine-tuning "
        f"{result['finetune']['epochs']} epochs x batch {result['finetune']['batch_size']}, lr chosen on ID-val from "
        f"{', '.join(f'{lr:g}' for lr in result['lr_grid'])} (wd {result['weight_decay']}), seeds "
        f"{[s['seed'] for s in ft['per_seed']]}. Accuracy in percent. Baseline fit in probit space over "
        f"{len(result['reference'])} random-init models trained on id_train: slope {fit['slope']:.3f}, intercept "
        f"{fit['intercept']:.3f}, R^2 {fit['r2']:.3f}.",
        "",
        "| model | ID test | " + " | ".join(shifts) + " | OOD avg | eff. robustness | OOD-val |",
        "|" + "---|" * (len(shifts) + 5),
        f"| zero-shot | {pct(zs['id_test'])} | "
        + " | ".join(pct(zs["ood"][s]) for s in shifts)
        + f" | {pct(zs['ood_avg'])} | {100 * zs['effective_robustness']:+.1f} | {pct(zs.get('ood_val', math.nan))} |",
        f"| FT (mean of {len(ft['per_seed'])}) | {pct(ft['id_test'])} | "
        + " | ".join(pct(ft["ood"][s]) for s in shifts)
        + f" | {pct(ft['ood_avg'])} | {100 * ft['effective_robustness']:+.1f} | {pct(ft.get('ood_val', math.nan))} |",
        "| FT - zero-shot | "
        + f"{100 * (ft['id_test'] - zs['id_test']):+.1f} | "
        + " | ".join(f"{100 * (ft['ood'][s] - zs['ood'][s]):+.1f}" for s in shifts)
        + f" | {100 * (ft['ood_avg'] - zs['ood_avg']):+.1f} | | |",
        "",
        "WiSE-FT curve of FT (mean over seeds): "
        + ", ".join(f"a={p['alpha']:.1f}: {pct(p['id_test'])}/{pct(p['ood_avg'])}" for p in curve),
        "",
        f"- WiSE-FT bulge (best OOD avg on the curve minus the better end): {100 * result['wiseft_bulge']:+.1f} "
        f"at alpha {result['wiseft_best_alpha']:.1f} (per seed: "
        + ", ".join(f"{100 * b:+.1f}" for b in result["wiseft_bulge_per_seed"])
        + ")",
        f"- far shifts where FT < zero-shot: {result['far_shifts_ft_below_zeroshot'] or 'none'}",
        "- chosen lr (best epoch) per seed: "
        + ", ".join(f"{s['seed']}: {s['lr']:g} ({s['best_epoch'] + 1})" for s in ft["per_seed"]),
        "- targets: " + ", ".join(f"{k} {'MET' if v else 'missed'}" for k, v in result["targets"].items()),
        "",
        "Reference models (epochs: ID test / OOD avg): "
        + ", ".join(f"{r['epochs']}: {pct(r['id_test'])}/{pct(r['ood_avg'])}" for r in result["reference"]),
    ]
    return "\n".join(lines) + "\n"


def plot(name: str, result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    refs = result["reference"]
    ax.scatter(probit([r["id_test"] for r in refs]), probit([r["ood_avg"] for r in refs]), c="grey", label="reference")
    fit = result["fit"]
    xs = np.linspace(probit(0.1), probit(0.995), 50)
    ax.plot(xs, fit["slope"] * xs + fit["intercept"], c="grey", ls="--", label="probit fit")
    ax.plot(xs, xs, c="black", lw=0.5, ls=":", label="y = x")
    curve = result["wiseft_curve"]
    ax.plot(
        probit([p["id_test"] for p in curve]),
        probit([p["ood_avg"] for p in curve]),
        "-o",
        ms=3,
        c="C0",
        label="WiSE-FT",
    )
    zs = result["zeroshot"]
    ax.scatter(probit(zs["id_test"]), probit(zs["ood_avg"]), marker="*", s=160, c="C1", label="zero-shot", zorder=3)
    for i, seed in enumerate(result["ft"]["per_seed"]):
        ax.scatter(
            probit(seed["ft"]["id_test"]),
            probit(seed["ft"]["ood_avg"]),
            marker="s",
            c="C3",
            label="FT (per seed)" if i == 0 else None,
            zorder=3,
        )
    ticks = np.array([0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99])
    ax.set_xticks(probit(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_yticks(probit(ticks), [f"{100 * t:g}" for t in ticks])
    ax.set_xlabel("ID test accuracy (probit scale)")
    ax.set_ylabel("OOD avg accuracy (probit scale)")
    ax.set_title(f"digits regime: recipe {name}")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


REFERENCE_LINE_FILE = REPO / "src" / "autoft" / "data" / "reference_lines" / "digits.json"


def reference_line_payload(result: dict[str, Any]) -> dict[str, Any]:
    """The shipped reference line (``autoft.effective_robustness.ReferenceLine``) from a regime result."""
    refs = result["reference"]
    shifts = list(result["zeroshot"]["ood"])
    return {
        "dataset": "digits",
        "space": result["fit"]["space"],
        "slope": result["fit"]["slope"],
        "intercept": result["fit"]["intercept"],
        "r2": result["fit"]["r2"],
        "x": "id_test",
        "y": "ood_avg",
        "metric": "accuracy",
        "ood_tests": shifts,
        "conditions": {"ood_test_severity": result.get("ood_test_severity", 3)},
        "provenance": {
            "script": "bench/regime.py",
            "fit": f"least squares in probit space (accuracies clipped to [{PROBIT_CLIP}, {1 - PROBIT_CLIP}])",
            "models": (
                f"{len(refs)} random-init {result['recipe']['model_name']} models, cross-entropy on digits "
                f"id_train (data seed 0), AdamW lr {REFERENCE_LR:g} wd {WEIGHT_DECAY}, batch "
                f"{result['finetune']['batch_size']}, best ID-val epoch"
            ),
            "epochs": [r["epochs"] for r in refs],
            "points": [{"epochs": r["epochs"], "id_test": r["id_test"], "ood_avg": r["ood_avg"]} for r in refs],
            "data_seed": 0,
            "docs": "docs/results/regime.md",
        },
    }


def export_reference_line(result: dict[str, Any], path: Path = REFERENCE_LINE_FILE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(reference_line_payload(result), indent=1) + "\n")


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_recipe(name: str, overrides: Sequence[str]) -> PretrainRecipe:
    fields = dict(RECIPES[name])
    for item in overrides:
        key, _, value = item.partition("=")
        fields[key] = parse_value(value)
    for key, value in list(fields.items()):
        if isinstance(value, list):  # JSON lists -> the tuples the frozen recipe holds
            fields[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return dataclasses.replace(DEFAULT_RECIPE, **fields)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--finetune", action="append", default=[], metavar="KEY=VALUE", help="finetune.* override")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LR_GRID))
    parser.add_argument("--name", help="label in the report (default: the recipe name)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "regime")
    parser.add_argument("--no-export", action="store_true", help="do not rewrite the shipped reference line")
    parser.add_argument(
        "--export-reference-line",
        type=Path,
        metavar="REGIME_JSON",
        help="rewrite the shipped reference line from a saved regime.json and exit",
    )
    args = parser.parse_args(argv)
    if args.export_reference_line:
        print(f"wrote {export_reference_line(json.loads(args.export_reference_line.read_text()))}")
        return 0
    torch.set_num_threads(1)
    recipe = build_recipe(args.recipe, args.overrides)
    name = args.name or args.recipe
    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    bench = load_benchmark(out.parent / "_data", args.finetune)
    result = measure(recipe, bench, args.seeds, args.lrs, out)
    result["name"] = name
    result["lr_grid"] = list(args.lrs)
    result["ood_test_severity"] = bench.data.extra.get("ood_test_severity")
    if not args.no_export and not args.finetune and bench.data.extra.get("seed") == 0:
        # The line depends on the data and the architecture, not on the recipe's pretraining.
        print(f"wrote {export_reference_line(result)}")
    atomic_write_text(out / "regime.json", json.dumps(result, indent=1))
    report = markdown(name, result)
    atomic_write_text(out / "regime.md", report)
    plot(name, result, out / "regime.png")
    print(report)
    return 0 if math.isfinite(result["wiseft_bulge"]) else 1


if __name__ == "__main__":
    sys.exit(main())
