"""search_worker: one of N parallel workers on a method's shared Optuna study."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def search_worker(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    method: str,
    worker_index: int,
    workers: int,
    storage: str,
    study_name: str,
    run_id: str,
    mlflow_tracking_uri: str,
    output_dir: str,
    prepared: Input[Dataset],
    zeroshot: Input[Model],
) -> int:
    """Run this worker's share of the study's TOTAL budget (search.n_trials); returns the study's counted trials.

    Each trial resets to the zero-shot weights, takes ``inner_steps`` steps with the proposed objective
    and scores the whole OOD-val (or ID-val, for baselines) subset.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for.
        method: The searched method (autoft, ft, flyp or ft_oodval).
        worker_index: This worker's number: its share of the budget, its sampler seed and batch order. A retried
            worker fails the trial its killed attempt left and finishes its share.
        workers: How many workers share the budget (from create_study's work item).
        storage: The study's storage from create_study's work item (a URL or env:AUTOFT_OPTUNA_STORAGE).
        study_name: The study name from the work item; checked against this run's, so runs never mix.
        run_id: The KFP run id (part of the study name; finds the run's MLflow tree).
        mlflow_tracking_uri: MLflow tracking URI; each finished trial adds a point to the method run's search
            curves (the report step stores every trial as one table there).
        output_dir: Optional local or mounted folder of the run (SQLite tracking lives there locally).
        prepared: The prepare_data output (ID train and the OOD-val subset).
        zeroshot: The zero-shot model every trial starts from.
    """
    from autoft.errors import ConfigError
    from autoft.stages import stage_search
    from autoft.threads import configure_threads
    from components.runtime import load_step_config, open_runs, run_scoped, study_storage_url, trial_progress

    config = run_scoped(load_step_config(config_yaml, config_overrides, methods), run_id)
    expected = config.search_for(method).study_name
    if study_name != expected:
        raise ConfigError(f"work item names study {study_name!r} but this run's {method} study is {expected!r}")
    configure_threads(parallel=workers)  # locally the workers share this machine's cores
    runs = open_runs(config, mlflow_tracking_uri, output_dir, run_id)
    counts = stage_search(
        config,
        prepared.path,
        zeroshot.path,
        method,
        study_storage_url(storage, method),
        worker_index=worker_index,
        workers=workers,
        progress=False,
        trial_callbacks=[runs.trial_logger(method), trial_progress(method, config.search_for(method).n_trials)],
    )
    print(f"search {method} worker {worker_index}: study trials {counts}")
    return counts["complete"] + counts["pruned"]
