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
    storage: str,
    study_name: str,
    run_id: str,
    prepared: Input[Dataset],
    zeroshot: Input[Model],
) -> int:
    """Run trials on the shared study until the TOTAL budget (search.n_trials) is met; returns trials done.

    Each trial resets to the zero-shot weights, takes ``inner_steps`` steps with the proposed objective
    and scores the whole OOD-val (or ID-val, for baselines) subset. Workers differ in ``worker_index``,
    which seeds their sampler and data order.
    """
    from autoft.methods import method_search_config
    from autoft.stages import stage_search
    from components.runtime import load_step_config, run_scoped, study_storage_url

    config = run_scoped(load_step_config(config_yaml, config_overrides, methods), run_id)
    expected = method_search_config(config, method).study_name
    if study_name != expected:
        # The item came from another run or config: searching it would mix two runs' trials.
        raise ValueError(f"work item names study {study_name!r} but this run's {method} study is {expected!r}")
    counts = stage_search(
        config,
        prepared.path,
        zeroshot.path,
        method,
        study_storage_url(storage, method),
        worker_index=worker_index,
        progress=False,
    )
    print(f"search {method} worker {worker_index}: study trials {counts}")
    return counts["complete"] + counts["pruned"]
