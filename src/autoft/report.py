"""results.json (:class:`autoft.contracts.Results`), a Markdown/HTML report and its plots."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are rendered in containers and CI
import matplotlib.pyplot as plt
import numpy as np

from autoft.atomic import atomic_path, atomic_write_text
from autoft.contracts import (
    CurvePoint,
    EvalResult,
    FinetuneSummary,
    MethodResult,
    PreparedData,
    Results,
    SearchResult,
    SearchSummary,
    WinnerCheck,
)
from autoft.effective_robustness import reference_line_for
from autoft.errors import DataError
from autoft.methods import BASE_METHODS, base_of, is_wiseft
from autoft.search_insight import importances, plot_search


def assemble_results(
    *,
    preset: str,
    metric: str,
    data: PreparedData,
    methods: list[str],
    evals: dict[str, EvalResult],
    searches: dict[str, SearchResult],
    finetunes: dict[str, FinetuneSummary],
    timing_s: dict[str, float],
) -> Results:
    """Collect the steps' outputs into results.json (fractions in [0, 1])."""
    ood_tests = data.ood_tests
    missing = [name for name in ("id_val", "id_test", *ood_tests) if name not in evals]
    if missing:
        raise DataError(f"cannot assemble results: no evaluation of {missing}")
    line = reference_line_for(data, metric)
    table: dict[str, MethodResult] = {}
    for method in methods:
        ood = {shift: evals[shift].models[method].value for shift in ood_tests}
        finetune = finetunes.get(base_of(method))
        search = searches.get(method)
        id_test = evals["id_test"].models[method].value
        ood_avg = sum(ood.values()) / len(ood) if ood else None
        table[method] = MethodResult(
            id_val=evals["id_val"].models[method].value,
            id_test=id_test,
            ood=ood,
            ood_avg=ood_avg,
            hparams=finetune.hparams if finetune else (search.hparams if search else None),
            wiseft_alpha=finetune.wiseft.best_alpha if finetune and is_wiseft(method) else None,
            lr_grid=finetune.grid if finetune and not is_wiseft(method) else [],
            effective_robustness=line.effective_robustness(id_test, ood_avg) if line and ood_avg is not None else None,
        )
    curves: dict[str, dict[str, CurvePoint]] = {}
    for method, points in evals["id_test"].wiseft_curves.items():
        curves[method] = {
            alpha: CurvePoint(
                id_test=value,
                ood_avg=sum(evals[s].wiseft_curves[method][alpha] for s in ood_tests) / len(ood_tests)
                if ood_tests
                else None,
            )
            for alpha, value in sorted(points.items(), key=lambda item: float(item[0]))
        }
    return Results(
        preset=preset,
        metric=metric,
        ood_val_set=data.ood_val_set,
        ood_val_indices_hash=data.ood_val_indices_hash,
        ood_val_distinct=data.ood_val_distinct,
        ood_val_examples=data.ood_val_examples,
        ood_val_holdout_distinct=data.ood_val_holdout_distinct,
        methods=table,
        search={
            method: SearchSummary(
                trials_complete=r.trials_complete, best_value=r.best_value, storage=r.storage, winner=r.winner
            )
            for method, r in searches.items()
        },
        wiseft_curves=curves,
        wiseft_select_on=next((f.wiseft.select_on for f in finetunes.values()), None),
        timing_s=timing_s,
        reference_line=line,
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def format_table(results: Results) -> str:
    """The results as a Markdown table (percentages), methods in run order; '-' where a number does not exist.

    With a reference line the last column is each method's effective robustness, in points.
    """
    shifts = list(next(iter(results.methods.values())).ood) if results.methods else []
    with_er = results.reference_line is not None
    header = ["method", "ID val", "ID test", *shifts, "OOD avg", *(["ER"] if with_er else [])]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in results.methods.items():
        cells = [row.id_val, row.id_test, *(row.ood[s] for s in shifts), row.ood_avg]
        er = [_points(row.effective_robustness)] if with_er else []
        rows.append("| " + " | ".join([method_label(method, row), *(_percent(v) for v in cells), *er]) + " |")
    return "\n".join(rows)


def method_label(method: str, row: MethodResult) -> str:
    """A row's name; a WiSE-FT row shows its alpha, and says so when alpha 1.0 made it its base unchanged."""
    if row.wiseft_alpha is None:
        return method
    if row.wiseft_alpha >= 1.0:
        return f"{method} (alpha 1.0 = {base_of(method)}, no interpolation)"
    return f"{method} (alpha {row.wiseft_alpha:g})"


SELECT_ON_TEXT = {
    "ood_val": "the best alpha on OOD-val (the set the AutoFT search scores; so OOD-val is no longer an unseen "
    "split for the WiSE-FT rows)",
    "id_val": "the best alpha on ID-val",
    "fixed": "a fixed alpha (wiseft.fixed_alpha)",
}


def _wiseft_lines(results: Results) -> list[str]:
    rows = {m: r for m, r in results.methods.items() if r.wiseft_alpha is not None}
    if not rows:
        return []
    how = SELECT_ON_TEXT.get(results.wiseft_select_on or "", f"`{results.wiseft_select_on}`")
    unchanged = [m for m, r in rows.items() if r.wiseft_alpha is not None and r.wiseft_alpha >= 1.0]
    lines = [
        "",
        f"WiSE-FT rows interpolate each method's fine-tuned weights with the zero-shot weights, "
        f"theta = (1 - alpha) * zero-shot + alpha * fine-tuned; every method's alpha is chosen the same way: {how} "
        f"(`wiseft.select_on`). Chosen: " + ", ".join(f"{m} {r.wiseft_alpha:g}" for m, r in rows.items()) + ".",
    ]
    if unchanged:
        verb, bases = ("is", "its base") if len(unchanged) == 1 else ("are", "their bases")
        lines.append(f"Alpha 1.0 means no interpolation: {', '.join(unchanged)} {verb} identical to {bases}.")
    return lines


def _grid_lines(results: Results) -> list[str]:
    lines = []
    for method, row in results.methods.items():
        if not row.lr_grid:
            continue
        points = "; ".join(
            f"lr {p.lr:.3g}: ID-val {100 * p.best_id_val:.1f} at epoch {p.best_epoch + 1} of {p.epochs_run}"
            + (" (stopped early)" if p.stopped_early else "")
            + (" **chosen**" if p.chosen else "")
            for p in row.lr_grid
        )
        lines.append(f"- **{method}** (full fine-tunes, weight decay {row.lr_grid[0].weight_decay:g}): {points}")
    return lines


def _reference_line_lines(results: Results) -> list[str]:
    line = results.reference_line
    if line is None:
        return []
    return [
        "",
        f"ER = effective robustness (Taori et al. 2020), in points: OOD avg minus what models trained on the "
        f"{line.dataset} ID data alone reach at the same ID test {line.metric}, from the shipped reference line "
        f"{line.space}(OOD avg) = {line.slope:.3f} * {line.space}(ID test) {line.intercept:+.3f}"
        + (f" (R^2 {line.r2:.3f})" if line.r2 is not None else "")
        + f"; {line.provenance.get('docs', 'see its provenance in results.json')}.",
    ]


def _ood_val_size_line(results: Results) -> list[str]:
    if not results.ood_val_distinct:
        return []
    holdout = (
        f"; {results.ood_val_holdout_distinct} further distinct images are held out to re-score the best trials"
        if results.ood_val_holdout_distinct
        else "; no held-out images (the best trials are not re-scored)"
    )
    return [
        "",
        f"OOD-val: {results.ood_val_distinct} distinct source images ({results.ood_val_examples} examples with "
        f"shifted copies){holdout}. Standard errors (SE) are over source images.",
    ]


SHOWN_TRIALS = 10  # trial numbers listed within one SE of the winner (a 500-trial search may have dozens)


def _se(value: float | None) -> str:
    return "" if value is None else f" ± {100 * value:.1f}"


def _holdout_context(check: WinnerCheck) -> str:
    """What the drop means: the two sets' difference in difficulty over all trials, and the winner's rank."""
    parts = []
    if check.holdout_offset is not None and check.winners_curse is not None:
        parts.append(
            f"Over all trials the median drop is {_points(check.holdout_offset)} (the held-out images' difficulty), "
            f"so the best trials lose {_points(check.winners_curse - check.holdout_offset)} beyond it (the winner's "
            "curse)."
        )
    if check.winner_holdout_rank is not None:
        parts.append(f"The winner ranks {check.winner_holdout_rank} on the held-out images.")
    if check.rank_agreement is not None:
        parts.append(f"Rank agreement of the two scores over all trials: Spearman {check.rank_agreement:.2f}.")
    return " ".join(parts)


def _scored_set(method: str) -> str:
    """The split a method's search scores, as the report names it."""
    spec = BASE_METHODS.get(base_of(method))
    return "ID-val" if spec is not None and spec.val_split == "id_val" else "the search's OOD-val"


def winner_lines(method: str, summary: SearchSummary, metric: str) -> list[str]:
    """The winner's SE and margin, a flag when it is within one SE, and the re-scored best trials."""
    check = summary.winner
    if check is None:
        return []
    best = check.top[0]
    margin = "no other trial" if check.margin is None else f"margin over the next best {100 * check.margin:.1f} points"
    if check.flagged:
        shown = ", ".join(map(str, check.within_se[:SHOWN_TRIALS]))
        more = f" and {len(check.within_se) - SHOWN_TRIALS} more" if len(check.within_se) > SHOWN_TRIALS else ""
        verdict = (
            f"**within one SE**: trials {shown}{more} are within one SE of the winner, "
            "which the search cannot tell apart from them"
        )
    elif check.best_se is None:
        verdict = "no SE available"
    else:
        verdict = "more than one SE"
    lines = [
        f"- **{method}** winner: trial {best.number}, {metric} {100 * best.search_score:.1f}{_se(check.best_se)} "
        f"on {_scored_set(method)}; {margin}: {verdict}."
    ]
    if any(r.holdout_score is not None for r in check.top):
        lines += [
            "",
            f"Winner's curse, **{method}**: its best {len(check.top)} trials re-scored on the held-out images "
            "(the same weights; nothing selected on them). Drop = search minus held-out, in points.",
            "",
            "| trial | search OOD-val | held-out | drop |",
            "|---|---|---|---|",
            *(
                f"| {r.number} | {100 * r.search_score:.1f}{_se(r.search_se)} | "
                f"{_percent(r.holdout_score)}{_se(r.holdout_se)} | "
                f"{_points(None if r.holdout_score is None else r.search_score - r.holdout_score)} |"
                for r in check.top
            ),
            "",
            f"Mean drop over these trials {_points(check.winners_curse)} points; the winner's "
            f"{_points(check.winner_drop)}. {_holdout_context(check)}",
            "",
        ]
    return lines


def _save_figure(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_id_vs_ood(results: Results, path: Path) -> Path | None:
    """ID test against OOD average for every method, with the WiSE-FT curves; None without OOD shifts."""
    placed = {m: row for m, row in results.methods.items() if row.ood_avg is not None}
    if not placed:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for method, curve in results.wiseft_curves.items():
        points = [p for p in curve.values() if p.ood_avg is not None]
        xs = [100 * p.id_test for p in points]
        ys = [100 * p.ood_avg for p in points]  # type: ignore[operator]
        ax.plot(xs, ys, "-", alpha=0.5, label=f"{method} WiSE-FT (alpha 0..1)")
    for method, row in placed.items():
        x, y = 100 * row.id_test, 100 * row.ood_avg  # type: ignore[operator]
        ax.scatter(x, y, s=45, zorder=3)
        ax.annotate(method, (x, y), fontsize=8, xytext=(4, 3), textcoords="offset points")
    line = results.reference_line
    if line is not None:
        low, high = ax.get_xlim()
        xs = np.linspace(max(low, 1.0), min(high, 99.0), 50)
        ax.plot(xs, [100 * line.predict(x / 100) for x in xs], "k--", lw=1, label="reference line (ER = 0)")
    ax.set_xlabel(f"ID test {results.metric} (%)")
    ax.set_ylabel(f"OOD average {results.metric} (%)")
    ax.set_title("ID vs OOD: every method, with WiSE-FT curves")
    ax.grid(alpha=0.3)
    if results.wiseft_curves or line is not None:
        ax.legend(fontsize=7, loc="best")
    _save_figure(fig, path)
    return path


def plot_wiseft_curves(results: Results, path: Path) -> Path | None:
    """Each WiSE-FT curve, ID test against OOD avg, every alpha labelled and the chosen one starred."""
    curves = {m: c for m, c in results.wiseft_curves.items() if any(p.ood_avg is not None for p in c.values())}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for method, curve in curves.items():
        points = [(float(alpha), p) for alpha, p in curve.items() if p.ood_avg is not None]
        xs = [100 * p.id_test for _, p in points]
        ys = [100 * p.ood_avg for _, p in points]  # type: ignore[operator]
        (line,) = ax.plot(xs, ys, "o-", ms=3, label=method)
        for (alpha, _), x, y in zip(points, xs, ys, strict=True):
            ax.annotate(f"{alpha:g}", (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        row = results.methods.get(f"{method}_wiseft")
        chosen = [(x, y) for (alpha, _), x, y in zip(points, xs, ys, strict=True) if row and alpha == row.wiseft_alpha]
        if chosen:
            ax.scatter(*chosen[0], marker="*", s=160, color=line.get_color(), zorder=4, label=f"{method}_wiseft")
    ax.set_xlabel(f"ID test {results.metric} (%)")
    ax.set_ylabel(f"OOD average {results.metric} (%)")
    how = results.wiseft_select_on or "?"
    ax.set_title(f"WiSE-FT: ID vs OOD per alpha (0 = zero-shot, 1 = fine-tuned); star = alpha chosen on {how}")
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    _save_figure(fig, path)
    return path


def _hparams_lines(results: Results) -> list[str]:
    lines = []
    for method, row in results.methods.items():
        hp = row.hparams
        if hp is None:
            continue
        weights = ", ".join(f"{k}={v:.3g}" for k, v in hp.weights.items())
        alpha = f", WiSE-FT alpha={row.wiseft_alpha}" if row.wiseft_alpha is not None else ""
        lines.append(f"- **{method}**: lr={hp.lr:.3g}, weight decay={hp.weight_decay:.3g}; weights: {weights}{alpha}")
    return lines


def _importance_lines(searches: dict[str, SearchResult]) -> list[str]:
    lines = []
    for method, result in searches.items():
        ranked = sorted(importances(result).items(), key=lambda item: -item[1])
        if ranked:
            shown = ", ".join(f"{name} {value:.2f}" for name, value in ranked)
            lines.append(f"- **{method}** (fANOVA over {result.trials_complete} trials): {shown}")
    return lines


def write_report(
    results: Results, searches: dict[str, SearchResult], out_dir: Path, dashboard_url: str = ""
) -> dict[str, Path]:
    """Write results.json, report.md, report.html and plots/ into ``out_dir``.

    Both reports stand alone: plots are embedded as data URIs (the Kubeflow UI shows a Markdown or HTML
    artifact without its sibling files). ``dashboard_url`` (an optuna-dashboard) links each study.
    """
    out_dir = Path(out_dir)
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path | None] = {
        "ID vs OOD": plot_id_vs_ood(results, plots / "id_vs_ood.png"),
        "WiSE-FT curves": plot_wiseft_curves(results, plots / "wiseft_curves.png"),
    }
    for result in searches.values():
        figures.update(plot_search(result, plots))
    search_lines = []
    for method, summary in results.search.items():
        study_id = searches[method].study_id if method in searches else None
        link = (
            f" ([optuna-dashboard]({dashboard_url.rstrip('/')}/dashboard/studies/{study_id}))"
            if (dashboard_url and study_id is not None)
            else ""
        )
        search_lines.append(
            f"- **{method}**: {summary.trials_complete} trials, best objective {summary.best_value:.4f} "
            f"(storage `{summary.storage}`){link}"
        )
    winner = [
        line for method, summary in results.search.items() for line in winner_lines(method, summary, results.metric)
    ]
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in results.timing_s.items())
    images = [f"![{title}]({_data_uri(path)})\n" for title, path in figures.items() if path is not None]
    importance = _importance_lines(searches)
    grid = _grid_lines(results)
    markdown = "\n".join(
        [
            f"# AutoFT report: preset `{results.preset}`",
            "",
            f"Metric: **{results.metric}** (percent). OOD-val set used by the AutoFT search: "
            f"**{results.ood_val_set}**. OOD avg = mean over the OOD test shifts.",
            "",
            format_table(results),
            *_reference_line_lines(results),
            *_wiseft_lines(results),
            *_ood_val_size_line(results),
            "",
            "## Chosen hyperparameters",
            *_hparams_lines(results),
            *(["", "### lr grid of the conventional baselines (best ID-val wins)", *grid] if grid else []),
            "",
            "## Search",
            *search_lines,
            "",
            *(["### Is the winner a winner?", *winner, ""] if winner else []),
            *(["### Which hyperparameters mattered", *importance, ""] if importance else []),
            "## Plots",
            *images,
            f"Timing: {timing}",
            "",
        ]
    )
    paths = {
        "results": results.save(out_dir / Results.FILE),
        "markdown": atomic_write_text(out_dir / "report.md", markdown),
        "html": atomic_write_text(out_dir / "report.html", markdown_to_html(markdown)),
    }
    paths.update({title: path for title, path in figures.items() if path is not None})
    return paths


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _inline(text: str) -> str:
    """Escape a line, then render the inline Markdown the report writes: bold, code and links."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return re.sub(r"\[(.+?)\]\((https?://[^)\s]+)\)", r'<a href="\2">\1</a>', text)


def markdown_to_html(markdown: str) -> str:
    """A small rendering of the report's Markdown subset (images are already data URIs)."""
    body, in_table = [], False
    for line in markdown.splitlines():
        if line.startswith("|") and "---" not in line:
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if "---" in line and line.startswith("|"):
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            alt, _, src = line[2:].partition("](")
            body.append(f'<p><img alt="{html.escape(alt)}" src="{html.escape(src.rstrip(")"))}"></p>')
        elif line.startswith("### "):
            body.append(f"<h3>{_inline(line[4:])}</h3>")
        elif line.startswith("- "):
            body.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    style = (
        "body{font-family:sans-serif;max-width:60em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}"
    )
    head = f"<head><meta charset='utf-8'><style>{style}</style></head>"
    return f"<!doctype html><html>{head}<body>{''.join(body)}</body></html>"
