"""select_best: read the best trial's effective hyperparameters back from a method's study."""

from kfp import dsl
from kfp.dsl import Artifact, Metrics, Output

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def select_best(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    method: str,
    study_storage: str,
    run_id: str,
    best_hparams: Output[Artifact],
    search_metrics: Output[Metrics],
):
    """Write the best trial's hyperparameters (loss weights, lr, weight decay) and every trial as JSON.

    The values are the EFFECTIVE ones each trial stored (anchor weight included), so fine-tuning uses
    exactly what was scored.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for.
        method: The searched method whose study is read.
        study_storage: The same study_storage the create_study step was given.
        run_id: The KFP run id (part of the study name).
        best_hparams: Output JSON (schema autoft.search/v1): the best hyperparameters and every trial.
        search_metrics: Output metrics for the Kubeflow UI: best value, trial count, lr, weight decay, weights,
            the best value's standard error, the within-one-SE flag and the winner's curse.
    """
    from autoft.study_stages import stage_select_best
    from components.runtime import load_step_config, run_scoped, study_storage_reference, study_storage_url

    config = run_scoped(load_step_config(config_yaml, config_overrides, methods), run_id)
    storage = study_storage_url(study_storage_reference(study_storage, config), method)
    result = stage_select_best(config, method, storage, best_hparams.path)
    best_hparams.metadata.update(
        {
            "method": method,
            "study_name": result.study_name,
            "storage": result.storage,
            "best_value": result.best_value,
            "best_trial": result.best_trial,
            "trials_complete": result.trials_complete,
            "seconds": result.seconds,
        }
    )
    search_metrics.log_metric("best_value", result.best_value)
    search_metrics.log_metric("trials_complete", result.trials_complete)
    search_metrics.log_metric("lr", result.hparams.lr)
    search_metrics.log_metric("weight_decay", result.hparams.weight_decay)
    for term, weight in result.hparams.weights.items():
        search_metrics.log_metric(f"w_{term}", weight)
    if result.winner is not None:  # the winner's SE, its flag and the winner's curse (docs/method.md)
        winner = result.winner
        search_metrics.log_metric("winner_within_one_se", float(winner.flagged))
        for name, value in (("best_se", winner.best_se), ("winners_curse", winner.winners_curse)):
            if value is not None:
                search_metrics.log_metric(name, value)
