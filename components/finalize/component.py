"""finalize: the exit handler; runs after everything else, whether the run succeeded or not."""

from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def finalize(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    run_id: str,
    study_storage: str,
    mlflow_tracking_uri: str,
    output_dir: str,
    status: PipelineTaskFinalStatus,
) -> str:
    """Fail the run's trials still marked RUNNING, end its MLflow run tree with the pipeline's final state.

    Everything here is derived from the pipeline parameters (an exit task cannot consume other tasks'
    outputs), and each clean-up is best effort so one failure does not hide the others.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for.
        run_id: The KFP run id (names the studies and tags the MLflow runs to close).
        study_storage: The same study_storage the create_study steps were given.
        mlflow_tracking_uri: MLflow tracking URI; empty uses the config, then MLFLOW_TRACKING_URI.
        output_dir: Optional local or mounted folder that receives pipeline_status.json.
        status: The pipeline's final state, set by Kubeflow.

    Returns:
        The summary as JSON: state, error, failed trials per method, closed MLflow runs, problems.
    """
    import json
    from pathlib import Path

    from autoft.atomic import atomic_write_json
    from autoft.methods import searched_methods
    from autoft.study_stages import stage_close_study
    from components.runtime import (
        load_step_config,
        open_runs,
        resolve_mlflow_uri,
        run_scoped,
        study_storage_reference,
        study_storage_url,
    )

    summary = {"state": status.state, "error": status.error_message, "failed_trials": {}, "closed_mlflow_runs": []}
    problems = []
    try:
        config = run_scoped(load_step_config(config_yaml, config_overrides, methods), run_id)
    except Exception as error:  # a bad config failed the run at prepare_data already: nothing was created
        config = None
        problems.append(f"config: {error}")
    if config is not None:
        try:
            reference = study_storage_reference(study_storage, config)
        except Exception as error:
            reference = None
            problems.append(f"study storage: {error}")
        for method in searched_methods(config.methods) if reference else []:
            try:
                url = study_storage_url(reference, method)
                summary["failed_trials"][method] = stage_close_study(config, method, url)
            except Exception as error:
                problems.append(f"study of {method}: {error}")
        try:
            uri = resolve_mlflow_uri(mlflow_tracking_uri, config, output_dir)
            # A local SQLite store that does not exist yet: the run failed before its first step tracked anything.
            if not (uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()):
                runs = open_runs(config, mlflow_tracking_uri, output_dir, run_id)
                summary["closed_mlflow_runs"] = runs.finish(succeeded=status.state == "SUCCEEDED")
        except Exception as error:
            problems.append(f"mlflow: {error}")
    summary["problems"] = problems
    if output_dir.strip():
        atomic_write_json(Path(output_dir) / "pipeline_status.json", summary)
    print(f"pipeline finished {status.state}: {json.dumps(summary)}")
    return json.dumps(summary)
