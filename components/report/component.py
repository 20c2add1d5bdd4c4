"""report: collect every evaluation into results.json, the Markdown/HTML report and the run's MLflow run."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def report(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    run_id: str,
    mlflow_tracking_uri: str,
    output_dir: str,
    prepared: Input[Dataset],
    evals: Input[list[Artifact]],
    results: Output[Artifact],
    report_md: Output[Markdown],
    report_html: Output[HTML],
    summary_metrics: Output[Metrics],
    autoft_search: Input[Artifact] = None,
    ft_oodval_search: Input[Artifact] = None,
    ft_finetune: Input[Artifact] = None,
    flyp_finetune: Input[Artifact] = None,
    autoft_finetune: Input[Artifact] = None,
    ft_oodval_finetune: Input[Artifact] = None,
    autoft_ce_finetune: Input[Artifact] = None,
) -> str:
    """Assemble results.json and the report (table, plots, Optuna's search insight); log them to MLflow.

    Built from the small typed JSON artifacts the search, fine-tuning and evaluation steps wrote (never
    the model weights), by the same functions the in-process runner uses. Each method's MLflow child run
    gets the same metric names (id_val, id_test, ood_avg, ood/<shift>, ood_val); the pipeline run the
    report files. Returns the pipeline's MLflow run id.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for.
        run_id: The KFP run id; the pipeline's MLflow run is tagged with it.
        mlflow_tracking_uri: MLflow tracking URI; empty uses the config, then MLFLOW_TRACKING_URI.
        output_dir: Optional local or mounted folder that also receives the report files.
        prepared: The prepare_data output (which splits are OOD tests).
        evals: Every evaluate step's results (schema autoft.eval/v1).
        results: Output results.json (schema autoft.results/v2).
        report_md: Output Markdown report (table, chosen hyperparameters, plots inline).
        report_html: Output self-contained HTML report.
        summary_metrics: Output metrics for the Kubeflow UI: ID test and OOD average per method.
        autoft_search: select_best output for autoft, when the run searches it.
        ft_oodval_search: select_best output for ft_oodval, when the run searches it.
        ft_finetune: finetune summary for ft, when the run fine-tunes it.
        flyp_finetune: finetune summary for flyp, when the run fine-tunes it.
        autoft_finetune: finetune summary for autoft, when the run fine-tunes it.
        ft_oodval_finetune: finetune summary for ft_oodval, when the run fine-tunes it.
        autoft_ce_finetune: finetune summary for autoft_ce, when the run fine-tunes it.
    """
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from autoft.config import save_config
    from autoft.contracts import EvalResult, FinetuneSummary, PreparedData, SearchResult
    from autoft.methods import finetuned_methods, searched_methods
    from autoft.report import assemble_results, write_report
    from components.runtime import load_step_config, open_runs, provided_inputs
    from components.tracking import ENV_OPTUNA_DASHBOARD

    config = load_step_config(config_yaml, config_overrides, methods)
    search_inputs = provided_inputs(
        searched_methods(config.methods),
        {"autoft": autoft_search, "ft_oodval": ft_oodval_search},
        "search result",
    )
    finetune_inputs = provided_inputs(
        finetuned_methods(config.methods),
        {
            "ft": ft_finetune,
            "flyp": flyp_finetune,
            "autoft": autoft_finetune,
            "ft_oodval": ft_oodval_finetune,
            "autoft_ce": autoft_ce_finetune,
        },
        "fine-tuning summary",
    )
    searches = {m: SearchResult.load(a.path) for m, a in search_inputs.items()}
    finetunes = {m: FinetuneSummary.load(a.path) for m, a in finetune_inputs.items()}
    # An evaluate task's results: one JSON, or a folder of them when it scored a shard of eval sets.
    evaluations = [
        EvalResult.load(path)
        for a in evals
        for path in (sorted(Path(a.path).glob("*.json")) if Path(a.path).is_dir() else [Path(a.path)])
    ]
    by_set = {e.eval_set: e for e in evaluations}
    timing = {
        "prepare": float(prepared.metadata.get("seconds", 0.0)),
        **{f"search_{m}": r.seconds for m, r in searches.items()},
        **{f"finetune_{m}": r.seconds for m, r in finetunes.items()},
        "evaluate": sum(e.seconds for e in evaluations),
    }
    table = assemble_results(
        preset=config.preset,
        metric=config.metric,
        data=PreparedData.load_from(prepared.path),
        methods=config.methods,
        evals=by_set,
        searches=searches,
        finetunes=finetunes,
        timing_s=timing,
    )
    bundle = Path(tempfile.mkdtemp(prefix="autoft-report-"))
    try:
        written = write_report(table, searches, bundle, dashboard_url=os.environ.get(ENV_OPTUNA_DASHBOARD, ""))
        save_config(config, bundle / "config.yaml")
        shutil.copy(bundle / "results.json", results.path)
        shutil.copy(bundle / "report.md", report_md.path)
        shutil.copy(bundle / "report.html", report_html.path)
        results.metadata.update({"schema": table.SCHEMA, "preset": table.preset, "metric": table.metric})
        if output_dir.strip():
            shutil.copytree(bundle, Path(output_dir), dirs_exist_ok=True)
        # Every method child gets the same metric names (compare them in MLflow); the pipeline run the report.
        runs = open_runs(config, mlflow_tracking_uri, output_dir, run_id)
        ood_val = {method: row.value for method, row in by_set["ood_val"].models.items()} if "ood_val" in by_set else {}
        for method, row in table.methods.items():
            runs.log_method_results(method, row, ood_val.get(method))
        for method, search in searches.items():  # one trial table (and the best few as nested runs) per search
            plots = {title: path for title, path in written.items() if title.startswith(f"{method}: ")}
            runs.log_search(method, search, plots, nested=config.tracking.nested_trials)
        runs.log(runs.parent_id, metrics={f"timing_s/{stage}": seconds for stage, seconds in timing.items()})
        runs.client.log_artifacts(runs.parent_id, str(bundle), "report")
    finally:
        shutil.rmtree(bundle, ignore_errors=True)

    for method, row in table.methods.items():
        summary_metrics.log_metric(f"{method}.id_test", row.id_test)
        if row.ood_avg is not None:
            summary_metrics.log_metric(f"{method}.ood_avg", row.ood_avg)
    print(f"report logged to MLflow run {runs.parent_id} ({config.tracking.experiment} at {runs.uri})")
    return runs.parent_id
