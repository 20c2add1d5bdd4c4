"""create_study: create one method's Optuna study on the shared storage before any worker starts."""

from kfp import dsl

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def create_study(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    method: str,
    study_storage: str,
    run_id: str,
    search_workers: int,
    mlflow_tracking_uri: str,
    output_dir: str,
) -> list[dict]:
    """Create (or, for a retried run, load) the study and return one work item per search worker.

    Creating the study here, once, keeps parallel workers from racing to create it; when a retried run
    resumes its study, trials its killed workers left RUNNING are failed here, before new workers start.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for.
        method: The searched method whose study this is (autoft or ft_oodval).
        study_storage: Where the studies live: an RDB URL without a password, a folder all steps share
            (kfp.local), or empty for search.storage, then AUTOFT_OPTUNA_STORAGE from the step's secret.
        run_id: The KFP run id; it makes the study name unique to this pipeline run.
        search_workers: How many workers share the budget (one work item each); at least 1.
        mlflow_tracking_uri: MLflow tracking URI; empty uses the config, then MLFLOW_TRACKING_URI. The method's
            run starts here, its first step (its fine-tune step ends it).
        output_dir: Optional local or mounted folder of the run (SQLite tracking lives there locally).

    Returns:
        One item per worker: {"worker_index", "workers", "storage", "study_name"}; storage is the URL, or
        env:AUTOFT_OPTUNA_STORAGE when the URL (with its password) comes from the step's secret env.
    """
    from autoft.errors import ConfigError
    from autoft.study_stages import stage_create_study
    from components.runtime import load_step_config, open_runs, run_scoped, study_storage_reference, study_storage_url

    if search_workers < 1:
        raise ConfigError(f"search_workers must be >= 1, got {search_workers}")
    config = run_scoped(load_step_config(config_yaml, config_overrides, methods), run_id)
    # Created here, once, before the workers start: parallel workers never race to create it.
    open_runs(config, mlflow_tracking_uri, output_dir, run_id).start_methods([method])
    reference = study_storage_reference(study_storage, config)
    counts = stage_create_study(config, method, study_storage_url(reference, method), search_workers)
    print(f"study for {method}: {counts}")
    study_name = config.search_for(method).study_name
    return [
        {"worker_index": index, "workers": search_workers, "storage": reference, "study_name": study_name}
        for index in range(search_workers)
    ]
