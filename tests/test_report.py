"""results.json and the human report from typed step outputs, including runs without OOD test shifts."""

from __future__ import annotations

from pathlib import Path

from autoft.contracts import CurvePoint, MethodResult, Results, SearchResult, TrialRecord
from autoft.hparams import Hyperparams
from autoft.report import format_table, write_report


def _results(with_shifts: bool) -> Results:
    def row(id_test: float, ood: float) -> MethodResult:
        shifts = {"invert": ood, "thick": ood + 0.1} if with_shifts else {}
        return MethodResult(
            id_val=id_test,
            id_test=id_test,
            ood=shifts,
            ood_avg=sum(shifts.values()) / len(shifts) if shifts else None,
            hparams=Hyperparams({"ce": 1.0}, 1e-4, 0.1),
        )

    curve = {"0.00": CurvePoint(id_test=0.5, ood_avg=0.4 if with_shifts else None)}
    return Results(
        preset="p",
        metric="accuracy",
        ood_val_set="colorize",
        methods={"zeroshot": row(0.5, 0.4), "ft": row(0.9, 0.5)},
        wiseft_curves={"ft": {**curve, "1.00": CurvePoint(id_test=0.9, ood_avg=0.55 if with_shifts else None)}},
    )


def _search() -> dict[str, SearchResult]:
    lr = '{"name": "FloatDistribution", "attributes": {"log": true, "step": null, "low": 1e-06, "high": 0.01}}'
    trials = [
        TrialRecord(number=i, state="COMPLETE", value=0.1 * i, params={"lr": 10 ** (-5 + i)}, distributions={"lr": lr})
        for i in range(3)
    ]
    result = SearchResult(
        method="ft",
        hparams=Hyperparams({"ce": 1.0}, 1e-4, 0.1),
        best_value=0.2,
        best_trial=2,
        trials_complete=3,
        storage="s",
        study_name="autoft-ft",
        trials=trials,
    )
    return {"ft": result}


def test_table_and_report_with_shifts(tmp_path: Path) -> None:
    results = _results(with_shifts=True)
    table = format_table(results)
    assert table.splitlines()[0] == "| method | ID val | ID test | invert | thick | OOD avg |"
    assert "| ft | 90.0 | 90.0 | 50.0 | 60.0 | 55.0 |" in table
    paths = write_report(results, _search(), tmp_path)
    assert {"results", "markdown", "html", "ID vs OOD", "ft: history"} <= set(paths)
    assert Results.load(tmp_path / "results.json") == results
    for report in ("report.html", "report.md"):  # plots inline: the Kubeflow UI shows the file alone
        assert (tmp_path / report).read_text().count("data:image/png;base64,") == len(paths) - 3


def test_a_run_without_ood_shifts_reports_dashes_and_skips_the_scatter(tmp_path: Path) -> None:
    results = _results(with_shifts=False)
    assert "| ft | 90.0 | 90.0 | - |" in format_table(results)
    paths = write_report(results, _search(), tmp_path)
    assert "ID vs OOD" not in paths and not (tmp_path / "plots" / "id_vs_ood.png").exists()
    assert "ft: history" in paths
    assert Results.load(tmp_path / "results.json").methods["ft"].ood_avg is None


def test_a_search_becomes_one_table_with_a_row_per_trial_and_its_best_few() -> None:
    from autoft.search_insight import TRIAL_COLUMNS, best_trials, trial_table

    trials = [
        TrialRecord(number=2, state="PRUNED", value=None, params={"lr": 0.1}, intermediate={10: 0.3, 30: 0.4}),
        TrialRecord(number=0, state="COMPLETE", value=0.7, params={"lr": 0.2}, start=0.0, seconds=1.23456),
        TrialRecord(number=1, state="FAIL", value=None, params={"lr": 0.3}),
        TrialRecord(number=3, state="COMPLETE", value=0.9, params={"lr": 0.4}, intermediate={10: 0.5}),
        TrialRecord(number=4, state="COMPLETE", value=0.7, params={"lr": 0.5}),
    ]
    rows = trial_table(trials)
    assert [row["number"] for row in rows] == [0, 1, 2, 3, 4]
    assert list(rows[0])[: len(TRIAL_COLUMNS)] == list(TRIAL_COLUMNS) and rows[0]["lr"] == 0.2
    assert (rows[0]["seconds"], rows[0]["start_utc"], rows[0]["pruned_step"]) == (1.235, "1970-01-01 00:00:00", "")
    pruned = rows[2]
    assert (pruned["state"], pruned["value"], pruned["pruned_step"], pruned["last_report"]) == ("PRUNED", "", 30, 0.4)
    assert rows[3]["pruned_step"] == "" and rows[3]["last_report"] == 0.5, "only a pruned trial has a pruned step"
    assert [t.number for t in best_trials(trials, 2)] == [3, 0], "highest value first; a tie goes to the earlier"
    assert best_trials(trials, 0) == [] and [t.number for t in best_trials(trials, -1)] == [0, 1, 2, 3, 4]
