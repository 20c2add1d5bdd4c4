"""prepare_data: validate the run's config, write the split manifests and draw the OOD-val subset."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def prepare_data(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    candidate_method: str,
    prepared: Output[Dataset],
) -> list[str]:
    """Validate the config and prepare the data; returns the eval set names (one evaluate task each).

    The prepared folder holds split manifests (paths or URIs plus labels) and the OOD-val subset; large
    datasets stay where they are and are referenced, only the small built-in benchmark keeps its arrays.
    Every bad parameter is reported here, before any compute.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for (its DAG has one branch per method).
        candidate_method: The model the gate judges and the registry receives (autoft or autoft_wiseft; empty
            when the pipeline runs no AutoFT); checked here so a typo fails before any compute.
        prepared: Output folder: data.json (the index of splits) and one manifest per split.
    """
    from autoft.config import save_config
    from autoft.stages import stage_prepare
    from components.runtime import check_candidate, load_step_config, stopwatch

    config = load_step_config(config_yaml, config_overrides, methods)
    check_candidate(candidate_method, config.methods)
    with stopwatch() as timing:
        data = stage_prepare(config, prepared.path)
        save_config(config, f"{prepared.path}/config.yaml")
    prepared.metadata.update(
        {
            "dataset": data.dataset,
            "preset": config.preset,
            "num_classes": len(data.class_names),
            "ood_val_set": data.ood_val_set,
            "ood_tests": list(data.ood_tests),
            "eval_sets": data.eval_sets,
            "ood_val_indices_hash": data.ood_val_indices_hash,
            "seconds": timing["seconds"],
        }
    )
    return data.eval_sets
