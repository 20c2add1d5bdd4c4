"""Effective robustness against the shipped digits reference line, and the benchmark statistics helpers.

The numbers are the measured ones of docs/results/regime.md (data seed 0, the shipped foundation model):
zero-shot 86.5 ID / 71.6 OOD avg has ER +22.8; the 128-epoch from-scratch reference model lies on the line.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from autoft.contracts import CurvePoint, EvalResult, MethodResult, ModelEval, PreparedData, Results
from autoft.effective_robustness import ReferenceLine, load_reference_line, reference_line_for
from autoft.report import assemble_results, format_table, write_report
from autoft.stats import paired_bootstrap_ci, spearman

REPO = Path(__file__).resolve().parents[1]
SHIFTS = ["gaussian_noise", "pixelate", "contrast", "invert", "thick", "outline", "textured_background"]
# docs/results/regime/regime.json: zero-shot and the from-scratch reference models (ID test, OOD avg).
ZEROSHOT = (0.8651315789473685, 0.7161654135338346)
REFERENCE_128_EPOCHS = (0.9572368421052632, 0.6160714285714286)
FT_SEED0 = (0.9473684210526315, 0.6893796992481203)


def digits_data(**extra_overrides) -> PreparedData:
    extra = {"seed": 0, "ood_test_severity": 3, **extra_overrides}
    return PreparedData(
        dataset="digits",
        class_names=[str(i) for i in range(10)],
        templates=["{}"],
        splits={},
        ood_val_set="colorize",
        ood_tests=SHIFTS,
        ood_val_indices_hash="x",
        extra=extra,
    )


def test_shipped_line_is_the_regime_fit() -> None:
    line = load_reference_line("digits")
    assert line is not None and line.space == "probit" and line.ood_tests == SHIFTS
    regime = json.loads((REPO / "docs" / "results" / "regime" / "regime.json").read_text())
    assert (line.slope, line.intercept) == (regime["fit"]["slope"], regime["fit"]["intercept"])
    assert round(line.slope, 3) == 0.529 and round(line.intercept, 3) == -0.614
    assert [p["epochs"] for p in line.provenance["points"]] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert load_reference_line("cifar10") is None


def test_effective_robustness_of_measured_models() -> None:
    line = load_reference_line("digits")
    assert line is not None
    assert 100 * line.effective_robustness(*ZEROSHOT) == pytest.approx(22.83, abs=0.01)  # regime.md: +22.8
    assert 100 * line.effective_robustness(*FT_SEED0) == pytest.approx(9.37, abs=0.01)  # regime.md seed 0: +9.4
    # The 128-epoch from-scratch model is one of the fitted points: within a point of the line (R^2 0.996).
    assert abs(100 * line.effective_robustness(*REFERENCE_128_EPOCHS)) < 0.1
    # At ID 90% the line predicts 52.5% OOD avg: norm.cdf(0.5285 * 1.2816 - 0.6139) = norm.cdf(0.0635) by hand.
    assert 100 * line.predict(0.9) == pytest.approx(52.53, abs=0.01)
    # Accuracy 1.0 has no probit: clipped like the fit, so still finite.
    assert np.isfinite(line.predict(1.0)) and np.isfinite(line.predict(0.0))


def test_linear_space_line() -> None:
    line = ReferenceLine(dataset="d", space="linear", slope=0.5, intercept=0.1, ood_tests=["a"])
    assert line.predict(0.8) == pytest.approx(0.5)
    assert line.effective_robustness(0.8, 0.6) == pytest.approx(0.1)


def test_the_line_applies_only_to_its_benchmark() -> None:
    assert reference_line_for(digits_data(), "accuracy") is not None
    assert reference_line_for(digits_data(seed=3), "accuracy") is not None  # other data seeds: same distribution
    assert reference_line_for(digits_data(ood_test_severity=5), "accuracy") is None
    assert reference_line_for(digits_data(), "macro_f1") is None
    fewer = digits_data().model_copy(update={"ood_tests": SHIFTS[:3]})
    line = load_reference_line("digits")
    assert line is not None and "OOD tests" in line.applies_to(fewer, "accuracy")[0]
    assert reference_line_for(fewer, "accuracy") is None


def _evals(values: dict[str, tuple[float, float]]) -> dict[str, EvalResult]:
    """Every method gets its OOD avg on every shift, so the shift mean is the OOD avg."""

    def one(name: str, pick) -> EvalResult:
        models = {m: ModelEval(metrics={}, value=pick(v), confusion=[]) for m, v in values.items()}
        return EvalResult(eval_set=name, metric="accuracy", models=models)

    evals = {"id_val": one("id_val", lambda v: v[0]), "id_test": one("id_test", lambda v: v[0])}
    evals.update({s: one(s, lambda v: v[1]) for s in SHIFTS})
    return evals


def test_results_and_report_carry_er(tmp_path: Path) -> None:
    values = {"zeroshot": ZEROSHOT, "ft": FT_SEED0}
    kwargs = dict(preset="digits", metric="accuracy", methods=list(values), searches={}, finetunes={}, timing_s={})
    results = assemble_results(data=digits_data(), evals=_evals(values), **kwargs)
    assert results.reference_line is not None
    assert 100 * results.methods["zeroshot"].effective_robustness == pytest.approx(22.83, abs=0.01)
    assert 100 * results.methods["ft"].effective_robustness == pytest.approx(9.37, abs=0.01)
    table = format_table(results)
    assert table.splitlines()[0].endswith("| OOD avg | ER |")
    assert "| zeroshot | 86.5 | 86.5 | " in table and table.splitlines()[2].endswith("| 71.6 | +22.8 |")
    write_report(results, {}, tmp_path)
    assert Results.load(tmp_path / "results.json") == results
    report = (tmp_path / "report.md").read_text()
    assert "effective robustness" in report and "0.529 * probit(ID test) -0.614" in report
    # Without an applicable line: ER is None and the report has no ER column.
    other = assemble_results(data=digits_data(ood_test_severity=5), evals=_evals(values), **kwargs)
    assert other.reference_line is None and other.methods["ft"].effective_robustness is None
    assert "ER" not in format_table(other)


def test_results_without_er_load() -> None:
    """results.json written before ER existed still loads (the field defaults to None)."""
    row = MethodResult(id_val=0.9, id_test=0.9, ood={}, ood_avg=None)
    payload = json.loads(
        Results(preset="p", metric="accuracy", ood_val_set="v", methods={"ft": row}, wiseft_curves={}).to_json()
    )
    for method in payload["methods"].values():
        del method["effective_robustness"]
    del payload["reference_line"]
    assert Results.parse(payload, "old").methods["ft"].effective_robustness is None
    assert CurvePoint(id_test=0.5, ood_avg=None).ood_avg is None


def test_paired_bootstrap_matches_the_exact_bootstrap_distribution() -> None:
    # Five seeds' differences (points). With n=5 the bootstrap distribution of the mean has 5^5 equally
    # likely resamples: enumerate them and take the exact 2.5/97.5 percentiles.
    a = [77.0, 75.5, 74.0, 78.0, 76.0]
    b = [74.0, 73.5, 75.0, 74.0, 73.0]
    diff = np.subtract(a, b)
    exact = np.array([np.mean(c) for c in itertools.product(diff, repeat=5)])
    low, high = np.percentile(exact, [2.5, 97.5])
    result = paired_bootstrap_ci(a, b, n_resamples=20_000)
    assert result.mean == pytest.approx(2.2)
    assert (result.wins, result.losses, result.n) == (4, 1, 5)
    assert result.low == pytest.approx(low, abs=0.15) and result.high == pytest.approx(high, abs=0.15)
    assert result.excludes_zero and (low, high) == pytest.approx((0.6, 3.4), abs=1e-9)
    # Same seed, same interval.
    assert paired_bootstrap_ci(a, b, n_resamples=20_000) == result


def test_paired_bootstrap_edge_cases() -> None:
    point = paired_bootstrap_ci([1.0, 2.0], [0.5, 1.5])
    assert (point.mean, point.low, point.high, point.method) == (0.5, 0.5, 0.5, "degenerate")
    assert paired_bootstrap_ci([3.0], [1.0]).low == 2.0
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1.0, 2.0], [1.0])
    straddles = paired_bootstrap_ci([1.0, -1.0, 2.0, -2.0, 0.5], [0.0] * 5)
    assert straddles.low < 0 < straddles.high and not straddles.excludes_zero


def test_spearman() -> None:
    rho, _ = spearman([0.1, 0.2, 0.3, 0.4], [10, 30, 20, 40])
    assert rho == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1])[0] == pytest.approx(-1.0)
