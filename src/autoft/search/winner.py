"""Whether a search's winner stands out: its margin against one standard error, and the winner's curse.

The best of many noisy scores is biased upward (the winner's curse): the trial that came first on the
search's OOD-val partly won by luck on those images. Every trial of a search over OOD-val is also scored
on held-out images that nothing selects on (``autoft.data.ood_val``); the best ``top_k`` trials' two
scores side by side show how much of the winning margin survives. See docs/method.md.
"""

from __future__ import annotations

import math

import numpy as np

from autoft.contracts import RescoredTrial, TrialRecord, WinnerCheck


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _ranks(values: list[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank (as Spearman's rho wants)."""
    array = np.asarray(values, dtype=float)
    order = np.argsort(array, kind="stable")
    ranks = np.empty(len(array))
    ranks[order] = np.arange(1, len(array) + 1)
    for value in np.unique(array):
        tied = array == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_rho(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (numpy only: select-best starts without scipy); None when undefined."""
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def check_winner(trials: list[TrialRecord], top_k: int) -> WinnerCheck | None:
    """The winner check of a maximised study's COMPLETE trials; None when none completed."""
    done = sorted(
        (t for t in trials if t.state == "COMPLETE" and _finite(t.value)),
        key=lambda t: (-float(t.value), t.number),  # type: ignore[arg-type]
    )
    if not done:
        return None
    best = done[0]
    best_value = float(best.value)  # type: ignore[arg-type]
    se = best.se if _finite(best.se) else None
    margin = best_value - float(done[1].value) if len(done) > 1 else None  # type: ignore[arg-type]
    within = [t.number for t in done[1:] if se is not None and best_value - float(t.value) <= se]  # type: ignore[arg-type]
    top = [
        RescoredTrial(
            number=t.number,
            search_score=float(t.value),  # type: ignore[arg-type]
            search_se=t.se,
            holdout_score=t.holdout if _finite(t.holdout) else None,
            holdout_se=t.holdout_se,
        )
        for t in done[:top_k]
    ]
    drops = [r.search_score - r.holdout_score for r in top if r.holdout_score is not None]
    paired = [(float(t.value), float(t.holdout)) for t in done if _finite(t.holdout)]  # type: ignore[arg-type]
    winner_rank = None
    if paired and _finite(best.holdout):
        winner_rank = 1 + sum(1 for _, held in paired if held > float(best.holdout))  # type: ignore[arg-type]
    return WinnerCheck(
        best_se=se,
        margin=margin,
        within_se=within,
        flagged=bool(within),
        top=top,
        winners_curse=sum(drops) / len(drops) if drops else None,
        winner_drop=top[0].search_score - top[0].holdout_score if top[0].holdout_score is not None else None,
        holdout_offset=float(np.median([a - b for a, b in paired])) if paired else None,
        winner_holdout_rank=winner_rank,
        rank_agreement=spearman_rho([a for a, _ in paired], [b for _, b in paired]) if paired else None,
    )
