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
    """Fail the run's trials still marked RUNNING, end its MLflow runs still open, record the final state.

    Once every worker is gone a RUNNING trial can never finish: left alone it would count against a
    resumed study's budget gates and show as running in the dashboard forever. Everything here is
    derived from the pipeline parameters (an exit task cannot consume other tasks' outputs), and each
    clean-up is best effort so one failure does not hide the others.
    """
    import json
    from pathlib import Path

    import optuna

    from autoft.methods import method_search_config, searched_methods
    from autoft.search.study import fail_orphaned_trials, open_storage
    from autoft.storage import atomic_write_json
    from components.runtime import (
        close_pipeline_runs,
        load_step_config,
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
            search = method_search_config(config, method)
            url = study_storage_url(reference, method)
            if "://" not in url and not Path(url).exists():
                continue  # the search never started: no journal file, nothing to clean
            try:
                study = optuna.load_study(study_name=search.study_name, storage=open_storage(url, search))
                summary["failed_trials"][method] = fail_orphaned_trials(study)
            except KeyError:
                continue  # this method's study was never created
            except Exception as error:
                problems.append(f"study {search.study_name}: {error}")
        try:
            summary["closed_mlflow_runs"] = close_pipeline_runs(
                config, mlflow_tracking_uri, output_dir, run_id, succeeded=status.state == "SUCCEEDED"
            )
        except Exception as error:
            problems.append(f"mlflow: {error}")
    summary["problems"] = problems
    if output_dir.strip():
        atomic_write_json(Path(output_dir) / "pipeline_status.json", summary)
    print(f"pipeline finished {status.state}: {json.dumps(summary)}")
    return json.dumps(summary)
