"""The conventional baselines ``ft`` and ``flyp``, as the paper and practitioners run them.

Not a search: one full fine-tune per learning rate of a small grid (``baselines.lr_grid``) at a fixed
weight decay (``baselines.weight_decay``), each to ``finetune.epochs`` with the best ID-val epoch kept and
optional early stopping (``baselines.patience``); the grid point with the best ID-val wins (ties: the
smaller lr). The grid points are independent (the pipeline runs them side by side); the selection reads
only their summaries, so it starts without torch.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from autoft.atomic import atomic_write_text
from autoft.config import AutoFTConfig
from autoft.contracts import FinetuneSummary, GridPoint
from autoft.errors import ConfigError, DataError
from autoft.hparams import Hyperparams
from autoft.methods import BASE_METHODS

MODEL_FOLDERS = ("model", "wiseft")  # what a grid point's folder holds besides finetune.json


def grid_hparams(config: AutoFTConfig, method: str, lr: float) -> Hyperparams:
    """One grid point: the method's one loss term at weight 1, ``lr``, the fixed weight decay."""
    spec = BASE_METHODS.get(method)
    if spec is None or not spec.grid:
        grid = [name for name, item in BASE_METHODS.items() if item.grid]
        raise ConfigError(f"method {method!r} has no lr grid; grid-tuned methods: {grid}")
    grid = config.baseline_lr_grid
    if not any(_same_lr(lr, point) for point in grid):
        raise ConfigError(f"lr {lr:g} is not in the baselines' lr grid {grid}; set baselines.lr_grid or pick one of it")
    anchor = spec.anchor or config.search.anchor
    return Hyperparams(weights={anchor: 1.0}, lr=lr, weight_decay=config.baselines.weight_decay)


def _same_lr(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b))


def grid_point_name(lr: float) -> str:
    """A grid point's folder name (the in-process runner's layout)."""
    return f"lr{lr:g}"


def best_grid_point(points: Sequence[FinetuneSummary]) -> int:
    """The index of the best ID-val point; ties go to the smaller lr (the gentler fine-tune)."""
    if not points:
        raise DataError("no grid points to choose from")
    return max(range(len(points)), key=lambda i: (points[i].best_id_val, -points[i].hparams.lr))


def grid_record(summary: FinetuneSummary, chosen: bool) -> GridPoint:
    return GridPoint(
        lr=summary.hparams.lr,
        weight_decay=summary.hparams.weight_decay,
        best_epoch=summary.best_epoch,
        best_id_val=summary.best_id_val,
        epochs_run=len(summary.history),
        stopped_early=summary.stopped_early,
        chosen=chosen,
    )


def stage_select_grid(config: AutoFTConfig, method: str, point_dirs: Sequence[Path], out_dir: Path) -> FinetuneSummary:
    """Keep the best grid point of ``method``: copy its ``model/`` and ``wiseft/`` into ``out_dir`` and write
    its summary there with every point's record (``FinetuneSummary.grid``).

    Every lr of the configured grid must be present exactly once, each fine-tuned for ``method``: a missing
    or foreign point would make the choice silently different from the one the config states.
    """
    config.check_method(method, purpose="grid")
    summaries = [FinetuneSummary.load(Path(folder) / FinetuneSummary.FILE) for folder in point_dirs]
    for folder, summary in zip(point_dirs, summaries, strict=True):
        if summary.method != method:
            raise DataError(f"{folder} holds a fine-tune of {summary.method!r}, not of {method!r}")
    grid = config.baseline_lr_grid
    found = sorted(s.hparams.lr for s in summaries)
    if len(found) != len(grid) or not all(_same_lr(a, b) for a, b in zip(found, grid, strict=True)):
        raise DataError(
            f"{method}'s grid points have lrs {found}, but the config's grid is {grid}: run every point once"
        )
    best = best_grid_point(summaries)
    source = Path(point_dirs[best])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FOLDERS:
        target = out_dir / name
        if target.exists():
            shutil.rmtree(target)  # a retried selection replaces its earlier copy
        shutil.copytree(source / name, target)
    order = sorted(range(len(summaries)), key=lambda i: summaries[i].hparams.lr)
    chosen = summaries[best].model_copy(update={"grid": [grid_record(summaries[i], chosen=i == best) for i in order]})
    atomic_write_text(out_dir / FinetuneSummary.FILE, chosen.to_json())
    return chosen


def grid_lines(summary: FinetuneSummary) -> list[str]:
    """The grid as report lines: each lr's best ID-val and epoch, the chosen one marked."""
    lines = []
    for point in summary.grid:
        stop = f", stopped early after {point.epochs_run}" if point.stopped_early else f", {point.epochs_run} epochs"
        mark = " **(chosen)**" if point.chosen else ""
        lines.append(
            f"lr {point.lr:.3g}: ID-val {100 * point.best_id_val:.1f} at epoch {point.best_epoch + 1}{stop}{mark}"
        )
    return lines
