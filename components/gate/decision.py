"""The promotion gate: promote a model only if it beats the baselines AND the current champion out of distribution.

The comparison is on ``ood_avg`` (the mean over the OOD test shifts of the run's metric), the number
AutoFT exists to improve. The champion's numbers come from its registry version's tags (written by the
register step). A champion measured on another preset or metric, or without an OOD average, cannot be
compared: it blocks promotion (someone must decide by hand) rather than being replaced blindly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoft.contracts import Results

OOD_AVG_TAG = "ood_avg"


@dataclass(frozen=True)
class Champion:
    version: str
    ood_avg: float | None
    preset: str
    metric: str

    @classmethod
    def from_version(cls, version: Any) -> Champion:
        """From an MLflow ModelVersion (the one behind the ``champion`` alias)."""
        tags = version.tags or {}
        raw = tags.get(OOD_AVG_TAG)
        try:
            ood_avg = float(raw) if raw is not None else None
        except ValueError:
            ood_avg = None
        return cls(str(version.version), ood_avg, tags.get("preset", ""), tags.get("metric", ""))


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    candidate_ood_avg: float | None


def decide(
    results: Results,
    candidate: str,
    baselines: list[str],
    min_gain: float,
    champion: Champion | None,
    preset: str,
    metric: str,
) -> GateDecision:
    """Compare the candidate's ``ood_avg`` with the best baseline of this run and with the champion."""
    methods = results.methods
    if candidate not in methods:
        raise ValueError(f"candidate {candidate!r} is not in the results (methods: {list(methods)})")
    score = methods[candidate].ood_avg
    if score is None:
        return GateDecision(False, f"{candidate} has no OOD test shifts to be judged on", None)
    if champion is not None and (champion.ood_avg is None or (champion.preset, champion.metric) != (preset, metric)):
        return GateDecision(
            False,
            f"champion v{champion.version} (preset {champion.preset or '?'}, metric {champion.metric or '?'}, "
            f"ood_avg {champion.ood_avg}) is not comparable with this run ({preset}, {metric}); use another "
            "registered_model or move the champion alias by hand",
            score,
        )
    rivals = {name: methods[name].ood_avg for name in baselines if name in methods and name != candidate}
    rivals = {name: value for name, value in rivals.items() if value is not None}
    if champion is not None and champion.ood_avg is not None:
        rivals[f"champion v{champion.version}"] = champion.ood_avg
    if not rivals:
        return GateDecision(True, f"{candidate} OOD avg {score:.4f}; no baseline or champion to beat", score)
    needed = max(rivals.values()) + min_gain
    table = ", ".join(f"{name} {value:.4f}" for name, value in rivals.items())
    if score > needed:
        return GateDecision(True, f"{candidate} OOD avg {score:.4f} > {needed:.4f} (best of: {table})", score)
    return GateDecision(False, f"{candidate} OOD avg {score:.4f} <= {needed:.4f} (best of: {table})", score)
