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
    ft_search: Input[Artifact] = None,
    flyp_search: Input[Artifact] = None,
    autoft_search: Input[Artifact] = None,
    ft_oodval_search: Input[Artifact] = None,
    ft_finetune: Input[Artifact] = None,
    flyp_finetune: Input[Artifact] = None,
    autoft_finetune: Input[Artifact] = None,
    ft_oodval_finetune: Input[Artifact] = None,
    autoft_ce_finetune: Input[Artifact] = None,
) -> str:
    """Assemble results.json (schema autoft.results/v1), the report with its table and plots, and the MLflow run.

    The same ``collect_results`` as the in-process runner builds the outputs, from the small JSON
    artifacts the search, fine-tuning and evaluation steps wrote (never the model weights). The MLflow run
    gets the config as params, the table as metrics and the report as artifacts; its id is returned.
    ``output_dir`` (a local or mounted folder) also receives the report files.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from autoft.config import save_config
    from autoft.methods import finetuned_methods, searched_methods
    from autoft.runner import RunLayout, collect_results
    from components.runtime import load_step_config, open_tracker, results_metrics, start_pipeline_run

    config = load_step_config(config_yaml, config_overrides, methods)
    search_inputs = {"ft": ft_search, "flyp": flyp_search, "autoft": autoft_search, "ft_oodval": ft_oodval_search}
    finetune_inputs = {
        "ft": ft_finetune,
        "flyp": flyp_finetune,
        "autoft": autoft_finetune,
        "ft_oodval": ft_oodval_finetune,
        "autoft_ce": autoft_ce_finetune,
    }
    scratch = Path(tempfile.mkdtemp(prefix="autoft-report-"))
    try:
        # Rebuild the in-process run folder layout from the artifacts, so results.json is built by the
        # exact code the in-process runner uses.
        layout = RunLayout(scratch / "run")
        layout.data.mkdir(parents=True)
        shutil.copy(Path(prepared.path) / "data.json", layout.data / "data.json")
        timing = {"prepare": float(prepared.metadata.get("seconds", 0.0))}
        for method in searched_methods(config.methods):
            artifact = search_inputs[method]
            if artifact is None:
                raise ValueError(f"no search result was passed for {method!r}; the pipeline wiring is wrong")
            layout.hparams(method).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(artifact.path, layout.hparams(method))
            timing[f"search_{method}"] = float(artifact.metadata.get("seconds", 0.0))
        for method in finetuned_methods(config.methods):
            artifact = finetune_inputs[method]
            if artifact is None:
                raise ValueError(f"no fine-tuning summary was passed for {method!r}; the pipeline wiring is wrong")
            layout.finetune(method).mkdir(parents=True, exist_ok=True)
            shutil.copy(artifact.path, layout.finetune(method) / "wiseft.json")
            timing[f"finetune_{method}"] = float(artifact.metadata.get("seconds", 0.0))
        timing["evaluate"] = 0.0
        for artifact in evals:
            eval_set = artifact.metadata["eval_set"]
            layout.eval(eval_set).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(artifact.path, layout.eval(eval_set))
            timing["evaluate"] += float(artifact.metadata.get("seconds", 0.0))
        save_config(config, layout.config)
        table = collect_results(config, layout, timing)

        shutil.copy(layout.root / "results.json", results.path)
        shutil.copy(layout.root / "report.md", report_md.path)
        shutil.copy(layout.root / "report.html", report_html.path)
        results.metadata.update({"schema": table["schema"], "preset": table["preset"], "metric": table["metric"]})
        bundle = scratch / "bundle"
        bundle.mkdir()
        for name in ("results.json", "report.md", "report.html", "config.yaml"):
            shutil.copy(layout.root / name, bundle / name)
        shutil.copytree(layout.root / "plots", bundle / "plots")
        if output_dir.strip():
            shutil.copytree(layout.root, Path(output_dir), dirs_exist_ok=True, ignore=shutil.ignore_patterns("data"))

        # The pipeline run's MLflow run (created here, ended by the exit handler): the resolved config,
        # the results table as metrics and the report files; gate and register add to it.
        tracker = open_tracker(config, mlflow_tracking_uri, output_dir)
        mlflow_run_id = start_pipeline_run(tracker, run_id, run_name=f"autoft-{config.preset}-{run_id}")
        tracker.set_tags({"autoft.preset": config.preset, "autoft.metric": config.metric})
        tracker.log_config(config)
        tracker.log_metrics(results_metrics(table))
        tracker.log_report(bundle)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    for method, row in table["methods"].items():
        summary_metrics.log_metric(f"{method}.id_test", float(row["id_test"]))
        if row["ood_avg"] is not None:
            summary_metrics.log_metric(f"{method}.ood_avg", float(row["ood_avg"]))
    print(f"report logged as MLflow run {mlflow_run_id} ({config.tracking.experiment})")
    return mlflow_run_id
