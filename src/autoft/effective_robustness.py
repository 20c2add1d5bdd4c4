"""Effective robustness (Taori et al. 2020) against a benchmark's shipped reference line.

A reference line says what OOD accuracy models trained on the ID data alone reach at a given ID
accuracy: ``probit(OOD avg) = slope * probit(ID test) + intercept``, fit over such models (for
``digits``: ``bench/regime.py``, random-init models of the same architecture at 8 training budgets).
A model's effective robustness is its OOD average minus the line at its own ID test accuracy: how
much more robust it is than ID accuracy alone explains. Zero-shot CLIP models sit far above the
line; ordinary fine-tuning usually moves toward it.

The lines ship as data (``autoft/data/reference_lines/<dataset>.json``) with the conditions under
which they hold (metric, OOD test shifts, their severity). A run whose data does not meet them gets
no effective robustness (None) rather than a number measured against the wrong line.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from autoft.contracts import PreparedData

REFERENCE_LINES_PACKAGE = "autoft.data"
REFERENCE_LINES_FOLDER = "reference_lines"
# Accuracies of 0 or 1 have no probit; they are clipped to [CLIP, 1 - CLIP] (as when the line was fit).
PROBIT_CLIP = 1e-3


def probit(p: float | np.ndarray) -> np.ndarray:
    from scipy.stats import norm  # imported here: contracts (light, used by every step) import this module

    return norm.ppf(np.clip(np.asarray(p, dtype=float), PROBIT_CLIP, 1 - PROBIT_CLIP))


class ReferenceLine(BaseModel):
    """``transform(y) = slope * transform(x) + intercept`` over models trained on the ID data alone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    space: Literal["probit", "linear"] = "probit"
    slope: float
    intercept: float
    r2: float | None = None
    x: Literal["id_test"] = "id_test"
    y: Literal["ood_avg"] = "ood_avg"
    metric: str = "accuracy"
    ood_tests: list[str] = Field(description="the OOD test shifts whose mean the line predicts, in order")
    conditions: dict[str, Any] = Field(
        default_factory=dict, description="PreparedData.extra values the line needs (e.g. the test severity)"
    )
    provenance: dict[str, Any] = Field(default_factory=dict, description="how and from what the line was fit")

    def _forward(self, value: float | np.ndarray) -> np.ndarray:
        return probit(value) if self.space == "probit" else np.asarray(value, dtype=float)

    def _inverse(self, value: np.ndarray) -> np.ndarray:
        from scipy.stats import norm

        return norm.cdf(value) if self.space == "probit" else value

    def predict(self, id_accuracy: float) -> float:
        """The OOD average a model trained on the ID data alone would have at this ID test accuracy."""
        return float(self._inverse(self.slope * self._forward(id_accuracy) + self.intercept))

    def effective_robustness(self, id_accuracy: float, ood_avg: float) -> float:
        """OOD avg minus the line's prediction, as a difference of fractions (x100 for accuracy points)."""
        return float(ood_avg) - self.predict(id_accuracy)

    def applies_to(self, data: PreparedData, metric: str) -> list[str]:
        """Why the line does not apply to a run on ``data`` scored with ``metric`` (empty: it applies)."""
        problems = []
        if data.dataset != self.dataset:
            problems.append(f"dataset {data.dataset!r}, the line is for {self.dataset!r}")
        if metric != self.metric:
            problems.append(f"metric {metric!r}, the line is for {self.metric!r}")
        if list(data.ood_tests) != list(self.ood_tests):
            problems.append(f"OOD tests {list(data.ood_tests)}, the line averages {self.ood_tests}")
        for key, value in self.conditions.items():
            if data.extra.get(key) != value:
                problems.append(f"{key} {data.extra.get(key)!r}, the line needs {value!r}")
        return problems


@lru_cache(maxsize=16)
def load_reference_line(dataset: str) -> ReferenceLine | None:
    """The shipped reference line of ``dataset``, or None when the package ships none."""
    folder = resources.files(REFERENCE_LINES_PACKAGE) / REFERENCE_LINES_FOLDER
    entry = folder / f"{dataset}.json"
    if not entry.is_file():
        return None
    return ReferenceLine.model_validate(json.loads(entry.read_text()))


def reference_line_for(data: PreparedData, metric: str) -> ReferenceLine | None:
    """The shipped line that applies to a run on ``data`` with ``metric``, else None."""
    line = load_reference_line(data.dataset)
    if line is None or line.applies_to(data, metric):
        return None
    return line
