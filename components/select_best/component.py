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
    exactly what was scored. The search's wall time spans the first trial's start to the last one's end.
    """
    from autoft.methods import method_search_config
    from autoft.search.study import create_or_load_study
    from autoft.study_stages import stage_select_best
    from components.runtime import load_step_config, run_scoped, study_storage_reference, study_storage_url

    config = run_scoped(load_step_config(config_yaml, config_overrides, methods), run_id)
    storage = study_storage_url(study_storage_reference(study_storage, config), method)
    payload = stage_select_best(config, method, storage, best_hparams.path)
    study = create_or_load_study(storage, method_search_config(config, method))
    finished = [t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_complete]
    seconds = 0.0
    if finished:
        first = min(t.datetime_start for t in finished)
        last = max(t.datetime_complete for t in finished)
        seconds = round((last - first).total_seconds(), 3)
    hparams = payload["hparams"]
    best_hparams.metadata.update(
        {
            "method": method,
            "study_name": study.study_name,
            "storage": payload["storage"],
            "best_value": payload["best_value"],
            "best_trial": payload["best_trial"],
            "trials_complete": payload["trials_complete"],
            "seconds": seconds,
        }
    )
    search_metrics.log_metric("best_value", float(payload["best_value"]))
    search_metrics.log_metric("trials_complete", int(payload["trials_complete"]))
    search_metrics.log_metric("lr", float(hparams["lr"]))
    search_metrics.log_metric("weight_decay", float(hparams["weight_decay"]))
    for term, weight in hparams["weights"].items():
        search_metrics.log_metric(f"w_{term}", float(weight))
